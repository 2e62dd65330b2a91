// One hot account pushed through its limit: VUS clients hammer the same account, each
// sending its next create as soon as the last one is answered (a closed loop, so the
// pressure is the same on a fast or a slow machine and concurrent writes to the one
// counter always overlap). Most creates must be refused with 409 once the limit is
// reached, and the limit must hold: never more successful creates than LIMIT.
import { createAccounts, createService, DURATION, thresholds } from './lib.js';

const VUS = Number(__ENV.VUS || 16);
const LIMIT = Number(__ENV.LIMIT || 300);

export const options = {
  scenarios: {
    creates: { executor: 'constant-vus', vus: VUS, duration: DURATION, exec: 'iteration', gracefulStop: '5s' },
  },
  thresholds: thresholds(['create'], {
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
