import type { Logger } from 'pino';
import { decodedOrUndefined, smscSchema, type SmsConfig, type SmscConfig } from '../config/schema.js';
import { secureContextOf } from '../crypto/tls-context.js';
import { CommandStatus, pduString, type SmppPdu } from './pdu.js';
import { isReceiptPdu, parseReceipt, toReceiptPdu } from './receipt.js';
import { SmppSession, type SmscSettings } from './session.js';
import type { AnsweredOutcome, DeliveryReceipt, LateRequest, SmsGateway, SmscStatus, SubmitOutcome, SubmitRequest } from './types.js';
import { routeByPrefix } from '../numbers/prefix-route.js';

/**
 * The SMS gateway: every configured SMSC with its binds (SmppSession), routing
 * by longest destination prefix, and load spreading over binds.
 *
 * Retry rules:
 * - `retry` / `connection_lost` (the bind went down before submit_sm was
 *   written: nothing left): sent at once on another bind of the same SMSC
 *   that is up, else `retry` goes back to the worker.
 * - `unconfirmed` (submit_sm written, no submit_sm_resp: response timeout, or
 *   the connection died with it in flight): never resent, here or by the
 *   worker. The SMSC may have stored it (an SMSC that accepts and then drops
 *   the connection before answering), and a second submit would text the
 *   handset twice. The bind keeps listening for a late submit_sm_resp for
 *   another 2 × responseTimeoutMs (reported through onLateResponse: accepted,
 *   or refused after all), then recycles the connection (session.ts); the
 *   worker waits for a late response or receipt until
 *   `sms.unconfirmedDeadlineMs`, then fails it `smsc_unconfirmed`.
 */

export interface SmppGatewayOptions {
  smscs: SmscSettings[];
  logger: Logger;
  /** When every bind that is up has a full window: how long a submit waits for a slot. Default 5000 ms. */
  slotWaitMs?: number;
  /** When no bind is up (e.g. just after start): how long a submit waits for one. Default 1000 ms. */
  bindWaitMs?: number;
  /** Bound on stop(): in-flight submits drain, then unbind. Default 5000 ms. */
  stopTimeoutMs?: number;
  /** The rate shared by every bind of every worker process for an SMSC with `accountTps` (engine/cluster-limits.ts SharedRate). */
  accountRate?: (smsc: SmscSettings) => { take(): Promise<void> };
  /** The binds shared by every worker process for an SMSC with `maxBinds` (engine/cluster-limits.ts SharedCount). */
  bindSlots?: (smsc: SmscSettings) => BindSlots;
  /** How often bind slots are renewed and asked for (default BIND_SLOT_POLL_MS). */
  bindSlotPollMs?: number;
}

interface SmscEntry {
  settings: SmscSettings;
  sessions: SmppSession[];
  /** sms.smscs[].maxBinds: this worker's share of the account's binds, counted over every worker process. */
  slots?: BindSlots | undefined;
  /** Sessions started (all of them without `slots`; as many as the slots granted with them). */
  started: number;
  /** The warning that every bind is held elsewhere was logged (again once some were granted). */
  refusedLogged?: boolean;
}

/** A cap on an SMSC account's binds shared by worker processes (engine/cluster-limits.ts SharedCount). */
export interface BindSlots {
  /** Takes up to `n` more for this worker (0: renews its lease); `held`: those it holds. */
  take(n: number, held: number): Promise<{ granted: number; total: number }>;
  /** This worker's binds no longer count (it stops). */
  leave(): Promise<void>;
}

/** How often a worker renews its share of an SMSC's binds and asks for the binds it was refused. */
export const BIND_SLOT_POLL_MS = 5000;

type Acquired = { session: SmppSession } | { reason: 'no_bind' | 'throttled' };

/** Default ports: 2775 for smpp://, 3550 for smpps:// (IANA / node-smpp). */
const DEFAULT_PORT = { smpp: 2775, smpps: 3550 } as const;

/** The SMSC list of `sms` config: `sms.smscs`, or `sms.url` as one SMSC named "default" when that list is empty. */
export function resolveSmscs(sms: SmsConfig): SmscSettings[] {
  const list: SmscConfig[] = sms.smscs.length > 0 ? sms.smscs : [smscSchema.parse({ name: 'default', url: sms.url })];
  return list.map(resolveSmsc);
}

function resolveSmsc(config: SmscConfig): SmscSettings {
  const url = new URL(config.url);
  const tls = url.protocol === 'smpps:';
  const { url: _url, systemId, password, tls: tlsConfig, ...rest } = config;
  return {
    ...rest,
    host: url.hostname.replace(/^\[|\]$/g, ''),
    port: url.port ? Number(url.port) : tls ? DEFAULT_PORT.smpps : DEFAULT_PORT.smpp,
    tls,
    ...(tls && tlsConfig
      ? {
          tlsOptions: {
            // Read and checked here, at start, as a TLS trunk's are: a bad file is a ConfigError naming the SMSC.
            secureContext: secureContextOf(tlsConfig, `sms.smscs[${config.name}].tls`),
            rejectUnauthorized: !tlsConfig.insecureSkipVerify,
            ...(tlsConfig.serverName !== undefined ? { servername: tlsConfig.serverName } : {}),
          },
        }
      : {}),
    // Checked at boot (config/schema.ts smppUrlProblem): a bad percent-encoding never gets here.
    systemId: systemId ?? decodedOrUndefined(url.username) ?? url.username,
    password: password ?? decodedOrUndefined(url.password) ?? url.password,
  };
}

export class SmppGateway implements SmsGateway {
  private readonly entries: SmscEntry[];
  private readonly log: Logger;
  private readonly slotWaitMs: number;
  private readonly bindWaitMs: number;
  private readonly stopTimeoutMs: number;
  private receiptHandler: ((receipt: DeliveryReceipt) => Promise<void>) | undefined;
  private lateResponseHandler: ((request: LateRequest, outcome: AnsweredOutcome) => void) | undefined;
  private readonly waiters = new Set<() => void>();
  private running = false;
  private roundRobin = 0;
  private slotTimer: NodeJS.Timeout | undefined;
  private readonly bindSlotPollMs: number;

  constructor(options: SmppGatewayOptions) {
    this.log = options.logger.child({ component: 'smpp' });
    this.slotWaitMs = options.slotWaitMs ?? 5_000;
    this.bindWaitMs = options.bindWaitMs ?? 1_000;
    this.stopTimeoutMs = options.stopTimeoutMs ?? 5_000;
    this.bindSlotPollMs = options.bindSlotPollMs ?? BIND_SLOT_POLL_MS;
    const delegate = {
      onMessage: (pdu: SmppPdu, session: SmppSession) => this.handleMessage(pdu, session),
      onAvailabilityChange: () => this.wakeWaiters(),
      onLateResponse: (request: SubmitRequest, outcome: AnsweredOutcome) => this.lateResponseHandler?.(request, outcome),
    };
    this.entries = options.smscs.map((settings) => {
      // One per SMSC, shared by its binds (and, through Redis, by the other worker processes' binds).
      const accountRate = settings.accountTps !== undefined ? options.accountRate?.(settings) : undefined;
      return {
        settings,
        sessions: Array.from(
          { length: settings.binds },
          (_, i) => new SmppSession({ smsc: settings, name: `${settings.name}#${i}`, logger: this.log, delegate, accountRate }),
        ),
        slots: settings.maxBinds !== undefined ? options.bindSlots?.(settings) : undefined,
        started: 0,
      };
    });
  }

  static fromConfig(sms: SmsConfig, logger: Logger, options: Omit<SmppGatewayOptions, 'smscs' | 'logger'> = {}): SmppGateway {
    return new SmppGateway({ ...options, smscs: resolveSmscs(sms), logger });
  }

  async start(): Promise<void> {
    if (this.running) return;
    this.running = true;
    for (const e of this.entries) {
      this.log.info(
        { smsc: e.settings.name, host: e.settings.host, port: e.settings.port, binds: e.settings.binds, bind_mode: e.settings.bindMode },
        'connecting to SMSC',
      );
      if (e.slots) continue;
      for (const s of e.sessions) s.start();
      e.started = e.sessions.length;
    }
    const shared = this.entries.filter((e) => e.slots);
    if (shared.length === 0) return;
    await Promise.all(shared.map((e) => this.claimBinds(e)));
    this.slotTimer = setInterval(() => void Promise.all(shared.map((e) => this.claimBinds(e))), this.bindSlotPollMs);
    this.slotTimer.unref();
  }

  /**
   * sms.smscs[].maxBinds: renews this worker's share of the SMSC's binds and asks for those it has not started yet;
   * starts the binds granted. Redis failing: the binds already started stay (their count lapses in Redis after the
   * lease, so others may take them: warned), none is started.
   */
  private async claimBinds(e: SmscEntry): Promise<void> {
    const slots = e.slots!;
    const wanted = e.sessions.length - e.started;
    let granted: number;
    let total: number;
    try {
      ({ granted, total } = await slots.take(wanted, e.started));
    } catch (err) {
      this.log.warn({ smsc: e.settings.name, err: (err as Error).message }, 'could not count this worker\'s binds of the SMSC in Redis (sms.smscs[].maxBinds)');
      return;
    }
    if (!this.running) return;
    const from = e.started;
    for (let i = 0; i < granted && e.started < e.sessions.length; i++) e.sessions[e.started++]!.start();
    if (granted > 0) {
      this.log.info({ smsc: e.settings.name, binds: e.started, of_account: total, max_binds: e.settings.maxBinds, started_now: e.started - from }, 'SMSC binds granted for this worker');
    } else if (wanted > 0 && !e.refusedLogged) {
      e.refusedLogged = true;
      this.log.warn(
        { smsc: e.settings.name, binds: e.started, wanted: e.sessions.length, of_account: total, max_binds: e.settings.maxBinds },
        'the SMSC account\'s binds are all held by other workers (sms.smscs[].maxBinds); asking again every few seconds',
      );
    }
    if (e.started === e.sessions.length) e.refusedLogged = false;
  }

  async stop(): Promise<void> {
    if (!this.running) return;
    this.running = false;
    if (this.slotTimer) clearInterval(this.slotTimer);
    this.slotTimer = undefined;
    this.wakeWaiters();
    await Promise.all(this.entries.flatMap((e) => e.sessions.map((s) => s.stop(this.stopTimeoutMs))));
    // Unbound: this worker's share of the accounts' binds goes back.
    await Promise.all(this.entries.map((e) => e.slots?.leave()));
    this.log.info('SMPP gateway stopped');
  }

  onLateResponse(handler: (request: LateRequest, outcome: AnsweredOutcome) => void): void {
    this.lateResponseHandler = handler;
  }

  onReceipt(handler: (receipt: DeliveryReceipt) => Promise<void>): void {
    this.receiptHandler = handler;
  }

  status(): SmscStatus[] {
    return this.entries.map((e) => {
      const up = e.sessions.filter((s) => s.isUp);
      return {
        name: e.settings.name,
        bindsUp: up.length,
        receiversUp: e.sessions.filter((s) => s.isReceiving).length,
        bindsConfigured: e.sessions.length,
        bindsStarted: e.started,
        inFlight: e.sessions.reduce((n, s) => n + s.inFlight, 0),
        // What this worker can have in flight now: the binds it has up (not those down, nor those left to other
        // workers under maxBinds).
        window: e.settings.window * up.length,
      };
    });
  }

  async submit(request: SubmitRequest): Promise<SubmitOutcome> {
    if (!this.running) return { kind: 'retry', reason: 'no_bind' };
    const route = this.route(request.to);
    if (route.length === 0) {
      request.logger.error('no SMSC routes this destination (no prefix matches and no default route)');
      return {
        kind: 'failed',
        reason: 'no_route',
        commandStatus: CommandStatus.ESME_RINVDSTADR,
        statusName: 'ESME_RINVDSTADR',
        smsc: '',
      };
    }
    const first = await this.acquire(route, undefined);
    if ('reason' in first) {
      return { kind: 'retry', reason: first.reason, smsc: route[0]?.settings.name };
    }
    const outcome = await first.session.submitReserved(request);
    // Only a submit that never left is sent on another bind; an `unconfirmed` one may be at the SMSC (see the top).
    if (outcome.kind !== 'retry' || outcome.reason !== 'connection_lost') return outcome;
    const entry = this.entries.find((e) => e.sessions.includes(first.session));
    if (!entry || !this.running) return outcome;
    const second = await this.acquire([entry], first.session);
    if ('reason' in second) return outcome;
    request.logger.info({ smsc: entry.settings.name, from_bind: first.session.name, to_bind: second.session.name, after: outcome.reason }, 'submit retried on another bind');
    return second.session.submitReserved(request);
  }

  /** SMSCs for `to`: those with the longest matching prefix, else those without prefixes (the default route). */
  private route(to: string): SmscEntry[] {
    return routeByPrefix(this.entries, to, (e) => e.settings.prefixes);
  }

  /**
   * The least-loaded bind with a free window slot (ties rotate), its slot
   * already reserved: the caller must hand it to `submitReserved`. Waits,
   * bounded, for a slot when every bind that is up is full (slotWaitMs) or for
   * a bind to come up (bindWaitMs). A bind backing off after ESME_RTHROTTLED /
   * ESME_RMSGQFUL is skipped; when only such binds are up, the submit waits
   * for the back-off to end if that fits in slotWaitMs, else gets `throttled`
   * without anything sent.
   */
  private async acquire(entries: SmscEntry[], exclude: SmppSession | undefined): Promise<Acquired> {
    // Only the binds this worker opens (its share of maxBinds): none, and the job goes back at once for a worker that has.
    const sessions = entries.flatMap((e) => e.sessions.slice(0, e.started)).filter((s) => s !== exclude);
    const started = performance.now();
    // Each pass either returns or waits for a change; the waits end by the deadlines.
    for (let pass = 0; pass < 10_000; pass += 1) {
      if (!this.running) return { reason: 'no_bind' };
      const picked = this.pick(sessions);
      if (picked) return { session: picked };
      const up = sessions.filter((s) => s.isUp);
      const usable = up.filter((s) => !s.isCoolingDown());
      const elapsed = performance.now() - started;
      if (usable.length === 0 && up.length > 0) {
        // Every bind that is up is backing off: wait it out if that fits the slot budget.
        const coolMs = Math.min(...up.map((s) => s.coolDownRemainingMs()));
        if (elapsed + coolMs > this.slotWaitMs) return { reason: 'throttled' };
        await this.waitForChange(Math.max(1, coolMs));
        continue;
      }
      const budget = usable.length > 0 ? this.slotWaitMs : this.bindWaitMs;
      const remaining = budget - elapsed;
      if (remaining <= 0 || sessions.length === 0) return { reason: 'no_bind' };
      await this.waitForChange(remaining);
    }
    return { reason: 'no_bind' };
  }

  private pick(sessions: SmppSession[]): SmppSession | undefined {
    const n = sessions.length;
    if (n === 0) return undefined;
    const offset = this.roundRobin++ % n;
    let best: SmppSession | undefined;
    let bestLoad = Infinity;
    for (let i = 0; i < n; i += 1) {
      const s = sessions[(offset + i) % n];
      if (!s?.hasRoom()) continue;
      const load = s.inFlight / s.window;
      if (load < bestLoad) {
        best = s;
        bestLoad = load;
      }
    }
    return best?.reserve() ? best : undefined;
  }

  private waitForChange(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        this.waiters.delete(done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.waiters.add(done);
    });
  }

  private wakeWaiters(): void {
    for (const w of [...this.waiters]) w();
  }

  /**
   * Receipts, whether deliver_sm or data_sm (SMPP 3.4 §4.7: esm_class 0x04 with receipted_message_id and
   * message_state), go to the handler, matched and settled the same way; a message that is not a receipt (a
   * mobile-originated one) is acknowledged and dropped.
   */
  private async handleMessage(pdu: SmppPdu, session: SmppSession): Promise<void> {
    const fields = toReceiptPdu(pdu);
    const receipt = parseReceipt(fields, session.smsc.name, session.smsc.messageIdFormat);
    if (!receipt) {
      this.log.info(
        { smsc: session.smsc.name, bind: session.name, command: pdu.command, seq: pdu.sequence_number },
        isReceiptPdu(fields) ? 'receipt without a message id or a state; ignored' : 'message from SMSC is not a receipt (mobile-originated?); dropped',
      );
      return;
    }
    const handset = pduString(pdu, 'source_addr');
    if (handset) receipt.handset = handset.replace(/^\+/, '');
    this.log.debug({ smsc: receipt.smsc, bind: session.name, command: pdu.command, message_id: receipt.messageId, state: receipt.state }, 'delivery receipt');
    const handler = this.receiptHandler;
    if (!handler) throw new Error('no receipt handler registered');
    await handler(receipt);
  }
}
