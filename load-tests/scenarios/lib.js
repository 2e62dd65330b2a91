// Shared by every scenario: the API's contract, status accounting, thresholds.
import http from 'k6/http';
import { Counter } from 'k6/metrics';

export const BASE_URL = __ENV.BASE_URL || 'http://127.0.0.1:8000';
export const DURATION = __ENV.DURATION || '20s';
export const SECONDS = parseInt(DURATION, 10);
export const P95_MS = Number(__ENV.P95_MS || 250);
export const P99_MS = Number(__ENV.P99_MS || 500);
const JSON_HEADERS = { headers: { 'Content-Type': 'application/json' } };

// Every status the OpenAPI document lists, per route. Anything else (a 500, a
// connection error reported as status 0) is outside the contract.
const CONTRACT = {
  account: [200, 400, 422, 503],
  create: [200, 400, 404, 409, 422, 503],
  delete: [200, 404, 422, 503],
  usage: [200, 404, 422, 503],
  list: [200, 404, 422, 503],
};

export const outsideContract = new Counter('outside_contract');
export const unexpectedResponses = new Counter('unexpected_responses');
export const created = new Counter('created');
export const limitRejections = new Counter('limit_rejections');

// 200 and 409 (limit reached) are what a healthy API answers under load.
http.setResponseCallback(http.expectedStatuses(200, 409));

// `expected`: the statuses this scenario accepts for this request. A response in the
// contract but not expected (a 503, a 404 for a service we just created) is still
// an error the caller saw.
export function record(res, name, expected) {
  if (!CONTRACT[name].includes(res.status)) outsideContract.add(1, { name });
  if (!expected.includes(res.status)) unexpectedResponses.add(1, { name });
  if (name === 'create' && res.status === 200) created.add(1);
  if (name === 'create' && res.status === 409) limitRejections.add(1);
  return res;
}

export function thresholds(names, extra = {}) {
  const t = {
    outside_contract: ['count==0'],
    unexpected_responses: ['count==0'],
    ...extra,
  };
  for (const name of names) {
    t[`http_req_duration{name:${name}}`] = [`p(95)<${P95_MS}`, `p(99)<${P99_MS}`];
  }
  return t;
}

// The system kept up: at most 5 % of the offered iterations were dropped.
export function keptUp(rate) {
  return [`count<=${Math.ceil(0.05 * rate * SECONDS)}`];
}

export function arrival(rate, exec, vus) {
  return {
    executor: 'constant-arrival-rate',
    rate,
    timeUnit: '1s',
    duration: DURATION,
    preAllocatedVUs: vus,
    maxVUs: vus * 4,
    exec,
    gracefulStop: '5s',
  };
}

export function createAccounts(count, limit) {
  const ids = [];
  for (let i = 0; i < count; i++) {
    const body = { username: `bench-${i}` };
    if (limit) body.max_number_of_services = limit;
    const res = http.post(`${BASE_URL}/accounts`, JSON.stringify(body), { ...JSON_HEADERS, tags: { name: 'account' } });
    record(res, 'account', [200]);
    if (res.status !== 200) throw new Error(`setup: POST /accounts answered ${res.status}: ${res.body}`);
    ids.push(res.json('id'));
  }
  return ids;
}

export function createService(accountId, expected = [200]) {
  const body = JSON.stringify({ account_id: accountId, name: `svc-${__VU}-${__ITER}` });
  const res = http.post(`${BASE_URL}/services`, body, { ...JSON_HEADERS, tags: { name: 'create' } });
  record(res, 'create', expected);
  return res.status === 200 ? res.json('id') : null;
}

export function deleteService(accountId, serviceId) {
  const res = http.del(`${BASE_URL}/services/${serviceId}?ownerAccountId=${accountId}`, null, { tags: { name: 'delete' } });
  return record(res, 'delete', [200]);
}

export function usage(accountId) {
  return record(http.get(`${BASE_URL}/accounts/${accountId}/usage`, { tags: { name: 'usage' } }), 'usage', [200]);
}

export function listServices(accountId) {
  return record(http.get(`${BASE_URL}/accounts/${accountId}/services?limit=20`, { tags: { name: 'list' } }), 'list', [200]);
}
