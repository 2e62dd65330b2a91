// One hot account pushed past its limit: every create contends for the same counter,
// and most of them must be refused with 409 once the limit is reached. The limit must
// hold: never more successful creates than LIMIT.
import { arrival, createAccounts, createService, keptUp, thresholds } from './lib.js';

const RATE = Number(__ENV.RATE || 100);
const LIMIT = Number(__ENV.LIMIT || 400);

export const options = {
  scenarios: { creates: arrival(RATE, 'iteration', Math.max(10, RATE)) },
  thresholds: thresholds(['create'], {
    dropped_iterations: keptUp(RATE),
    created: [`count<=${LIMIT}`],
    limit_rejections: ['count>0'],
  }),
};

export function setup() {
  return { account: createAccounts(1, LIMIT)[0] };
}

export function iteration(data) {
  createService(data.account, [200, 409]);
}
