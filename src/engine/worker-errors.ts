import type { Worker } from 'bullmq';
import type { Logger } from 'pino';
import { isPassingRefusal } from '../store/redis.js';

/** One warn line per distinct error message per this long, with the count of those not logged since. */
const LOG_EVERY_MS = 5000;
/** A worker whose fetch Redis refuses is paused this long first, doubling up to the last, until a job is fetched again. */
const FIRST_PAUSE_MS = 100;
const LAST_PAUSE_MS = 2000;

/**
 * A BullMQ worker's 'error' events: logged at most once per distinct message per 5 s (`more_since_last_line`), and a
 * refusal that passes (Redis full, a replica, loading: isPassingRefusal) pauses the worker for a while. BullMQ takes
 * such a refusal of its job fetch for an error that is not the connection's and fetches again at once: thousands of
 * refused scripts and log lines a second against a Redis that is already full.
 */
export function watchWorkerErrors(worker: Pick<Worker, 'on' | 'pause' | 'resume' | 'closing'>, logger: Logger, label: string): void {
  let last = '';
  let loggedAt = 0;
  let more = 0;
  let pauseMs = FIRST_PAUSE_MS;
  let pausing = false;
  worker.on('error', (err: Error) => {
    const now = Date.now();
    if (err.message !== last || now - loggedAt >= LOG_EVERY_MS) {
      logger.warn({ err: err.message, ...(more > 0 ? { more_since_last_line: more } : {}) }, label);
      last = err.message;
      loggedAt = now;
      more = 0;
    } else more++;
    if (!isPassingRefusal(err) || pausing || worker.closing) return;
    pausing = true;
    const wait = pauseMs;
    pauseMs = Math.min(LAST_PAUSE_MS, pauseMs * 2);
    // Jobs in progress go on (doNotWaitActive); only the fetching of new ones stops.
    void worker
      .pause(true)
      .catch(() => undefined)
      .then(() => {
        setTimeout(() => {
          pausing = false;
          if (!worker.closing) void worker.resume();
        }, wait).unref();
      });
  });
  worker.on('active', () => {
    pauseMs = FIRST_PAUSE_MS;
  });
}
