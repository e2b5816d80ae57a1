// Shared by meshgate's k6 scripts: the scenario (open model at a fixed arrival rate,
// closed model with a fixed number of virtual users, or a fixed number of iterations),
// thresholds that fail the run on any error, and the summary file the runner reads.
//
// Every script exports this file's `setup` and `teardown`: they print a marker line the
// runner watches for, so it reads meshgate's CPU time right when the scenario starts
// (after k6 has initialized its VUs) and right after it ended (graceful stop included),
// not over k6's own start-up and shutdown.
//
// Environment (all optional except BASE_URL / GRPC_ADDR):
//   EXECUTOR   rate (constant-arrival-rate, default) | vus (constant-vus) | iterations (shared-iterations)
//   RATE       arrivals per second (rate)                       default 100
//   DURATION   how long (rate, vus)                             default 10s
//   VUS        virtual users (vus, iterations; rate: pre-allocated) default 32
//   MAX_VUS    rate: most VUs k6 may add when requests queue    default 4 x VUS
//   ITERATIONS iterations (iterations)                          default 100
//   SUMMARY    where to write k6's end-of-test summary as JSON
//   MODEL      model to ask for                                 default llama3.2

import { Rate } from 'k6/metrics';

export const MODEL = __ENV.MODEL || 'llama3.2';

// One sample per request: whether every check on it passed. The runner counts its
// failures as the scenario's errors.
export const requestOk = new Rate('request_ok');

export function scenario() {
  const executor = __ENV.EXECUTOR || 'rate';
  const duration = __ENV.DURATION || '10s';
  const vus = parseInt(__ENV.VUS || '32', 10);
  if (executor === 'vus') {
    return { executor: 'constant-vus', vus, duration, gracefulStop: '5s' };
  }
  if (executor === 'iterations') {
    return {
      executor: 'shared-iterations',
      vus,
      iterations: parseInt(__ENV.ITERATIONS || '100', 10),
      maxDuration: __ENV.MAX_DURATION || '120s',
      gracefulStop: '5s',
    };
  }
  return {
    executor: 'constant-arrival-rate',
    rate: parseInt(__ENV.RATE || '100', 10),
    timeUnit: '1s',
    duration,
    preAllocatedVUs: vus,
    maxVUs: parseInt(__ENV.MAX_VUS || String(vus * 4), 10),
    gracefulStop: '5s',
  };
}

// Any failed request or failed check fails the run (k6 exits non-zero).
export function options(extraThresholds) {
  return {
    scenarios: { load: scenario() },
    thresholds: Object.assign(
      { checks: ['rate==1'], request_ok: ['rate==1'] },
      extraThresholds || {},
    ),
    summaryTrendStats: ['avg', 'min', 'med', 'max', 'p(50)', 'p(95)', 'p(99)', 'count'],
    discardResponseBodies: false,
    noConnectionReuse: false,
    // The runner reads the summary file; keep stdout short.
    summaryTimeUnit: 'ms',
  };
}

// k6 runs setup() once all pre-allocated VUs are initialized, just before the scenario
// starts, and teardown() once the scenario (and its graceful stop) is over.
export const WINDOW_START = 'meshgate-loadtest: measured window starts';
export const WINDOW_END = 'meshgate-loadtest: measured window ends';

export function setup() {
  console.log(WINDOW_START);
}

export function teardown() {
  console.log(WINDOW_END);
}

export function summary(data) {
  const out = {};
  if (__ENV.SUMMARY) {
    out[__ENV.SUMMARY] = JSON.stringify(data);
  }
  const m = data.metrics;
  const reqs = m.http_reqs ? m.http_reqs.values.count : (m.iterations ? m.iterations.values.count : 0);
  const failed = m.checks ? m.checks.values.fails : 0;
  out.stdout = `k6: ${reqs} requests, ${failed} failed checks\n`;
  return out;
}
