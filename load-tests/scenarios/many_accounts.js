// The normal production shape: many accounts, each creating services now and then;
// the total arrives at a constant rate.
import { arrival, createAccounts, createService, keptUp, thresholds } from './lib.js';

const RATE = Number(__ENV.RATE || 60);
const ACCOUNTS = Number(__ENV.ACCOUNTS || 50);

export const options = {
  scenarios: { creates: arrival(RATE, 'iteration', Math.max(10, RATE)) },
  thresholds: thresholds(['create'], { dropped_iterations: keptUp(RATE) }),
  setupTimeout: '120s',
};

export function setup() {
  return { accounts: createAccounts(ACCOUNTS) };
}

export function iteration(data) {
  createService(data.accounts[Math.floor(Math.random() * data.accounts.length)]);
}
