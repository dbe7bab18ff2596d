/** Gives a slot back; only the first call counts. */
export type ReleaseSlot = () => void;

/** A delivery waiting for a slot: admitted with a release, or failed when the slots are closed. */
interface Waiter {
  admit(release: ReleaseSlot): void;
  fail(err: Error): void;
}

interface Origin {
  /** Slots held: deliveries admitted and not yet ended. */
  held: number;
  /** Deliveries waiting for a slot, oldest first (a Set: one that gives up leaves it in O(1)). */
  waiting: Set<Waiter>;
}

/** What a delivery waiting for a slot, or asking for one, gets once the process is stopping (WebhookSlots.close). */
export class SlotsClosedError extends Error {
  constructor() {
    super('webhook connections closed: the process is stopping');
  }
}

/**
 * At most `limit` webhook deliveries in flight per receiver origin; the others wait their turn, first come first
 * served. It stands in front of the connection pool (webhook-agents.ts), whose Agent is given room for every
 * delivery admitted here and so never queues a request itself: a request waiting in Node's Agent queue cannot be
 * taken out of it when its deadline fires (`agent.requests` is the Agent's own), and when a busy connection of its
 * origin closed the Agent opened a new one for it anyway, then closed it unused: a stray connection to the
 * customer's receiver. A delivery waiting here leaves the queue the moment its signal aborts.
 */
export class WebhookSlots {
  private readonly origins = new Map<string, Origin>();
  private closed = false;

  constructor(private readonly limit: number) {}

  /**
   * Resolves with the release of a slot of `origin` once one is free (at once when one is); rejects with the
   * signal's reason if it aborts first, and the delivery is no longer queued.
   */
  acquire(origin: string, signal: AbortSignal): Promise<ReleaseSlot> {
    if (this.closed) return Promise.reject(new SlotsClosedError());
    if (signal.aborted) return Promise.reject(signal.reason);
    let o = this.origins.get(origin);
    if (!o) {
      o = { held: 0, waiting: new Set() };
      this.origins.set(origin, o);
    }
    const entry = o;
    if (entry.held < this.limit) {
      entry.held++;
      return Promise.resolve(this.releaser(origin, entry));
    }
    return new Promise<ReleaseSlot>((resolve, reject) => {
      const waiter: Waiter = {
        admit: (release) => {
          signal.removeEventListener('abort', giveUp);
          resolve(release);
        },
        fail: (err) => {
          signal.removeEventListener('abort', giveUp);
          reject(err);
        },
      };
      const giveUp = (): void => {
        entry.waiting.delete(waiter);
        reject(signal.reason);
      };
      signal.addEventListener('abort', giveUp, { once: true });
      entry.waiting.add(waiter);
    });
  }

  /**
   * The process is stopping (its connections are being closed): every delivery still waiting for a slot fails at
   * once with SlotsClosedError, and so does any that asks later, instead of opening a connection after the pools
   * were closed. Slots held are still given back by their deliveries.
   */
  close(): void {
    this.closed = true;
    for (const entry of this.origins.values()) {
      const waiting = [...entry.waiting];
      entry.waiting.clear();
      for (const w of waiting) w.fail(new SlotsClosedError());
    }
  }

  /** Slots held and deliveries waiting for `origin` (the timeout message of a delivery that waited in vain). */
  stats(origin: string): { held: number; waiting: number } {
    const o = this.origins.get(origin);
    return { held: o?.held ?? 0, waiting: o?.waiting.size ?? 0 };
  }

  /**
   * Slots held and deliveries waiting, over every origin of this process (the `/metrics` gauges, at scrape time).
   * Only origins with a delivery holding or waiting are in the map, so this walks the receivers busy now.
   */
  totals(): { held: number; waiting: number } {
    let held = 0;
    let waiting = 0;
    for (const o of this.origins.values()) {
      held += o.held;
      waiting += o.waiting.size;
    }
    return { held, waiting };
  }

  private releaser(origin: string, entry: Origin): ReleaseSlot {
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const next = entry.waiting.values().next();
      if (!next.done) {
        // The slot passes to the oldest waiter, `held` unchanged. It runs on a later microtask (a promise), after
        // the Agent has put the connection just given back in its free list, so it is reused, not one more opened.
        entry.waiting.delete(next.value);
        next.value.admit(this.releaser(origin, entry));
        return;
      }
      entry.held--;
      // An origin no delivery holds or waits for is forgotten: the map does not grow with every receiver ever seen.
      if (entry.held === 0) this.origins.delete(origin);
    };
  }
}
