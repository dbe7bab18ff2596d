/**
 * One `abort` listener per signal, whatever the number of subscribers: the
 * worker's shutdown signals (`ShutdownSignals`) are process-wide and every
 * call in flight subscribes to them. Node's EventTarget keeps listeners in a
 * list and scans it on every add and remove, so one listener per call made
 * each call cost O(calls in flight) (1.3-1.8 % of the worker at 500-1,500
 * calls, BENCHMARKS.md); a Set makes subscribing and unsubscribing O(1).
 */
const subscribers = new WeakMap<AbortSignal, Set<() => void>>();

/**
 * Runs `fn` once when `signal` aborts (at once when it already has);
 * returns the unsubscribe function.
 */
export function onAbort(signal: AbortSignal, fn: () => void): () => void {
  if (signal.aborted) {
    fn();
    return () => undefined;
  }
  let set = subscribers.get(signal);
  if (!set) {
    const created = new Set<() => void>();
    set = created;
    subscribers.set(signal, created);
    signal.addEventListener(
      'abort',
      () => {
        const due = [...created];
        created.clear();
        for (const f of due) {
          try {
            f();
          } catch (err) {
            // As EventTarget does: one failing subscriber does not keep the others from stopping; the error still surfaces.
            queueMicrotask(() => {
              throw err;
            });
          }
        }
      },
      { once: true },
    );
  }
  const s = set;
  s.add(fn);
  return () => void s.delete(fn);
}
