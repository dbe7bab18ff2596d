/**
 * Waiting for a promise for at most a given time. The timer is cleared
 * whichever side wins, so a fast `work` leaves no timer behind to keep the
 * process alive (a shutdown would otherwise wait out the whole limit).
 */

export interface TimeLimitOptions {
  /** Do not let the timer alone keep the process alive. */
  unref?: boolean;
}

/**
 * Resolves true when `work` fulfils within `ms`, false when `ms` passes first
 * (`work` then goes on unwatched); rejects when `work` rejects first. An
 * undefined `work` counts as done.
 */
export async function waitAtMost(work: PromiseLike<unknown> | undefined, ms: number, options: TimeLimitOptions = {}): Promise<boolean> {
  return (await race(work, ms, options)) !== TIMED_OUT;
}

/** `work`'s value, or a rejection with `timedOut()` when `ms` passes first. */
export async function withDeadline<T>(work: PromiseLike<T>, ms: number, timedOut: () => Error, options: TimeLimitOptions = {}): Promise<T> {
  const result = await race(work, ms, options);
  if (result === TIMED_OUT) throw timedOut();
  return result;
}

const TIMED_OUT: unique symbol = Symbol('timed out');

async function race<T>(work: PromiseLike<T> | T, ms: number, { unref = false }: TimeLimitOptions): Promise<T | typeof TIMED_OUT> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<typeof TIMED_OUT>((resolve) => {
    timer = setTimeout(resolve, ms, TIMED_OUT);
    if (unref) timer.unref();
  });
  try {
    return await Promise.race([work, late]);
  } finally {
    clearTimeout(timer);
  }
}
