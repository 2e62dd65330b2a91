// The original project's scenario: create-then-delete iterations on one account,
// at a constant arrival rate.
import { arrival, createAccounts, createService, deleteService, keptUp, thresholds } from './lib.js';

const RATE = Number(__ENV.RATE || 25);

export const options = {
  scenarios: { create_then_delete: arrival(RATE, 'iteration', Math.max(10, RATE)) },
  thresholds: thresholds(['create', 'delete'], { dropped_iterations: keptUp(RATE) }),
};

export function setup() {
  return { account: createAccounts(1)[0] };
}

export function iteration(data) {
  const id = createService(data.account);
  if (id) deleteService(data.account, id);
}
