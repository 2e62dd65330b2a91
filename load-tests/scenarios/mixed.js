// Reads with writes: usage and listing reads alongside creates and deletes.
// Each writer iteration creates a service and deletes the one it created before.
import { arrival, createAccounts, createService, deleteService, keptUp, listServices, thresholds, usage } from './lib.js';

const WRITE_RATE = Number(__ENV.WRITE_RATE || 20);
const USAGE_RATE = Number(__ENV.USAGE_RATE || 30);
const LIST_RATE = Number(__ENV.LIST_RATE || 15);
const ACCOUNTS = Number(__ENV.ACCOUNTS || 10);

export const options = {
  scenarios: {
    writes: arrival(WRITE_RATE, 'write', Math.max(10, WRITE_RATE)),
    usage_reads: arrival(USAGE_RATE, 'readUsage', Math.max(10, USAGE_RATE)),
    list_reads: arrival(LIST_RATE, 'readList', Math.max(10, LIST_RATE)),
  },
  thresholds: thresholds(['create', 'delete', 'usage', 'list'], {
    dropped_iterations: keptUp(WRITE_RATE + USAGE_RATE + LIST_RATE),
  }),
  setupTimeout: '60s',
};

export function setup() {
  return { accounts: createAccounts(ACCOUNTS) };
}

function pick(accounts) {
  return accounts[Math.floor(Math.random() * accounts.length)];
}

const mine = []; // this VU's services, oldest first

export function write(data) {
  const account = pick(data.accounts);
  const id = createService(account);
  if (id) mine.push([account, id]);
  if (mine.length > 1) {
    const [owner, old] = mine.shift();
    deleteService(owner, old);
  }
}

export function readUsage(data) {
  usage(pick(data.accounts));
}

export function readList(data) {
  listServices(pick(data.accounts));
}
