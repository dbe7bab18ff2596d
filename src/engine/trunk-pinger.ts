import type { Logger } from 'pino';
import type { TrunkConfig } from '../config/schema.js';
import type { CallOriginator, PingResult } from '../sip/call-originator.js';
import type { TrunkPacer } from './trunk-pacer.js';

export interface TrunkPingerOptions {
  originator: Pick<CallOriginator, 'ping'>;
  pacer: Pick<TrunkPacer, 'report' | 'setPinged' | 'verdictOf'>;
  trunks: readonly TrunkConfig[];
  /** `sip.trunkHealth.optionsPingMs`: the interval of trunks without their own `optionsPingMs`; 0 = off. */
  defaultIntervalMs: number;
  /** The longest a ping waits for its final response: Timer F (64*T1). */
  maxTimeoutMs: number;
  /** Counts each verdict (`flashverify_trunk_pings_total`). */
  onResult?: (trunk: string, result: Exclude<PingResult['outcome'], 'not_sent'>) => void;
  logger: Logger;
}

/** The ping interval of a trunk (ms, 0 = no pings): its own `optionsPingMs`, else the default. */
export function pingIntervalMs(trunk: TrunkConfig, defaultIntervalMs: number): number {
  return trunk.optionsPingMs ?? defaultIntervalMs;
}

const PING_LOG: Record<PingResult['outcome'], string> = {
  answered: 'OPTIONS ping answered',
  timeout: 'OPTIONS ping failed',
  unreachable: 'OPTIONS ping failed',
  not_sent: 'OPTIONS ping not sent',
};

interface Slot {
  readonly trunk: TrunkConfig;
  readonly intervalMs: number;
  readonly log: Logger;
  timer: NodeJS.Timeout | undefined;
}

/**
 * OPTIONS keep-alive pings (RFC 3261 11) from one worker process to each trunk that has them on, as Kamailio's
 * dispatcher (ds_ping_interval), FreeSWITCH gateway pings or Asterisk qualify do. The first goes at start(), then
 * one every interval, never two to one trunk at a time: the next is due `interval` after the previous one left,
 * and waits for it to end. A ping waits for its final response at most the interval (so an unanswered one has
 * failed by the time the next is due), and never longer than Timer F.
 *
 * Verdicts go to the worker's TrunkPacer, with its calls': any final response is `up`, silence or a transport
 * error `failed`; a ping the backend could not send (stack stopped, drachtio not connected) says nothing.
 * Pings are not calls: no call metric, and no CPS token of the trunk (an SBC counts OPTIONS apart from call
 * attempts, and one ping per interval is nothing next to `cps`). Timers are unref'd: pings never keep the
 * process alive.
 */
export class TrunkPinger {
  private readonly slots: Slot[];
  private running = false;

  constructor(private readonly options: TrunkPingerOptions) {
    this.slots = options.trunks
      .map((trunk) => ({
        trunk,
        intervalMs: pingIntervalMs(trunk, options.defaultIntervalMs),
        log: options.logger.child({ trunk: trunk.name }),
        timer: undefined,
      }))
      .filter((s) => s.intervalMs > 0);
  }

  /** Names of the trunks that get pings. */
  get pingedTrunks(): string[] {
    return this.slots.map((s) => s.trunk.name);
  }

  start(): void {
    if (this.running) return;
    this.running = true;
    for (const slot of this.slots) {
      this.options.pacer.setPinged(slot.trunk, true);
      slot.log.info({ interval_ms: slot.intervalMs, timeout_ms: this.timeoutOf(slot) }, 'OPTIONS pings to this trunk');
      this.schedule(slot, 0);
    }
  }

  /** No more pings; the result of one in flight is dropped (the SIP stack, stopped next, ends it). */
  stop(): void {
    this.running = false;
    for (const slot of this.slots) {
      clearTimeout(slot.timer);
      slot.timer = undefined;
    }
  }

  private timeoutOf(slot: Slot): number {
    return Math.min(slot.intervalMs, this.options.maxTimeoutMs);
  }

  private schedule(slot: Slot, delayMs: number): void {
    if (!this.running) return;
    slot.timer = setTimeout(() => void this.pingOnce(slot), delayMs);
    slot.timer.unref();
  }

  private async pingOnce(slot: Slot): Promise<void> {
    slot.timer = undefined;
    const started = Date.now();
    const result = await this.options.originator
      .ping({ trunk: slot.trunk, timeoutMs: this.timeoutOf(slot), logger: slot.log })
      .catch((err: unknown): PingResult => ({ outcome: 'not_sent', callId: '', phrase: err instanceof Error ? err.message : String(err) }));
    if (!this.running) return;
    this.record(slot, result, Date.now() - started);
    this.schedule(slot, Math.max(0, started + slot.intervalMs - Date.now()));
  }

  private record(slot: Slot, result: PingResult, ms: number): void {
    const { outcome, callId, status, phrase } = result;
    slot.log.debug({ call_id: callId || undefined, outcome, status, phrase, ms }, PING_LOG[outcome]);
    if (outcome === 'not_sent') return;
    this.options.onResult?.(slot.trunk.name, outcome);
    // A ping answered with a failure status (503 by default: an SBC in maintenance) fails like no answer.
    this.options.pacer.report(slot.trunk, outcome === 'answered' && this.options.pacer.verdictOf('answered', status) === 'up' ? 'up' : 'failed');
  }
}
