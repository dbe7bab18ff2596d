/**
 * Injectable timer source for every SIP timer (RFC 3261 17.1.1.1). Tests pass
 * vitest fake timers or a hand-rolled clock; production uses the globals.
 */

/** Opaque handle returned by {@link Clock.setTimeout}. */
export type TimerHandle = unknown;

export interface Clock {
  setTimeout(callback: () => void, ms: number): TimerHandle;
  clearTimeout(handle: TimerHandle): void;
}

/** Global timers, looked up at call time so `vi.useFakeTimers()` applies. */
export const systemClock: Clock = {
  setTimeout: (callback, ms) => globalThis.setTimeout(callback, ms),
  clearTimeout: (handle) => globalThis.clearTimeout(handle as ReturnType<typeof globalThis.setTimeout>),
};

/** RFC 3261 timer base values, milliseconds. */
export interface SipTimerConfig {
  /** RTT estimate (default 500). */
  t1Ms: number;
  /** Maximum retransmit interval for non-INVITE requests and INVITE responses (default 4000). */
  t2Ms: number;
  /** Maximum duration a message remains in the network (default 5000). */
  t4Ms: number;
}

/** Timer D for unreliable transports: "> 32 s" (RFC 3261 17.1.1.2, Table 4). */
export const TIMER_D_UNRELIABLE_MS = 32_000;
