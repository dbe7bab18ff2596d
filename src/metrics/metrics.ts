import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import { VERSION } from '../version.js';
import { withDeadline } from '../async/time-limit.js';

/**
 * How long a scrape waits for a gauge read from Redis. A read that fails or takes longer leaves the gauge's last
 * values: a scrape must not fail, nor hang, because Redis is slow or down (a BullMQ connection queues its commands
 * until Redis is back, with no limit of its own).
 */
export const SCRAPE_REDIS_MS = 1000;

/** `read`'s value, or undefined when it fails or takes over SCRAPE_REDIS_MS. */
function fromRedis<T>(read: Promise<T> | undefined): Promise<T | undefined> {
  if (read === undefined) return Promise.resolve(undefined);
  return withDeadline(read, SCRAPE_REDIS_MS, () => new Error('scrape read timed out')).catch(() => undefined);
}

/** The events stream's consumer groups (XINFO GROUPS): entries pending (read, not acknowledged) and lag (not read). */
export interface EventGroupsSource {
  eventGroups(): Promise<{ name: string; pending: number; lag?: number }[]>;
}

/** What the concurrent-calls gauge reads at scrape time (the embedded originator has it). */
export interface ActiveCallsSource {
  readonly activeCalls: number;
}

/** What a queue-depth gauge reads at scrape time (a BullMQ Queue has it). */
export interface JobCountsSource {
  getJobCounts(...types: ('waiting' | 'active' | 'delayed')[]): Promise<Record<string, number>>;
}

/** What the trunk gauge reads at scrape time (the worker's trunk pacer). */
export interface TrunkStatusSource {
  status(): { name: string; up: boolean; enabled: boolean; calls: number; waiting: number }[];
}

/** What the SMPP gauges read at scrape time (the SMS gateway has it). */
export interface SmscStatusSource {
  status(): { name: string; bindsUp: number; receiversUp: number; bindsConfigured: number; bindsStarted: number; inFlight: number; window: number }[];
}

/** What the range-quarantine gauge reads at scrape time (numbers/range-health.ts has it). */
export interface RangeQuarantineSource {
  readonly ranges: readonly string[];
  quarantined(): Promise<Set<string>>;
}

/** What the RTP gauges and counters read at scrape time (the embedded media player has it). */
export interface RtpStatsSource {
  /** Totals over the playbacks that have ended (counted when each ends). */
  readonly stats: { packets: number; lateOver5ms: number; lateOnWake: number };
  /** Sessions holding an RTP port now. */
  readonly activeSessions: number;
}

/** What the webhook breaker gauge reads at scrape time (events/webhook-breaker.ts). */
export interface WebhookBreakersSource {
  openCount(): Promise<number>;
}

/** What the webhook connection gauges read at scrape time (events/webhook-agents.ts). */
export interface WebhookConnectionsSource {
  usage(): { held: number; waiting: number };
}

/** What the webhook DNS gauge reads at scrape time (events/webhook-host-cache.ts). */
export interface WebhookDnsSource {
  stats(): { running: number; waiting: number };
}

/** Job states the queue-depth gauge reports; completed/failed are history, not depth. */
const DEPTH_STATES = ['waiting', 'active', 'delayed'] as const;

/**
 * The engine's Prometheus metrics, on a registry of its own (never the
 * prom-client global one, so two engines in one process, as in tests, do not
 * collide). One instance per process, created in main.ts and handed down
 * through constructors. Label values are bounded sets (trunk names, range
 * prefixes and outcomes from config and code), never request data.
 *
 * CPS is not a metric of its own: `rate(flashverify_calls_started_total[1m])`.
 */
export class Metrics {
  readonly registry = new Registry();
  private readonly callsStarted: Counter<'method' | 'trunk'>;
  private readonly calls: Counter<'method' | 'trunk' | 'outcome'>;
  private readonly pdd: Histogram<'trunk'>;
  private readonly trunkPings: Counter<'trunk' | 'result'>;
  private readonly srvFailovers: Counter<'trunk' | 'method' | 'reason'>;
  private readonly routeAdvances: Counter<'method' | 'trunk' | 'reason'>;
  private readonly trunkLimitFallbacks: Counter<'trunk' | 'limit'>;
  private readonly smscRateFallbacks: Counter<'smsc'>;
  private readonly jobLatencyHist: Histogram<'queue'>;
  private readonly webhookFailures: Counter<'final'>;
  private readonly webhookDelivery: Histogram;
  private readonly webhookLag: Histogram;
  private readonly webhookSkips: Counter;
  private readonly webhookDeferrals: Counter<'reason'>;
  private readonly webhookDirects: Counter<'result'>;
  private readonly webhookDnsLookups: Counter;
  private readonly webhookDnsCache: Counter<'answer'>;
  private readonly webhookDnsFailures: Counter<'reason'>;
  private readonly webhookDnsTimeouts: Counter;
  private readonly rangeSentCounter: Counter<'range'>;
  private readonly rangeVerifiedCounter: Counter<'range'>;
  private readonly conversionSentCounter: Counter<'country' | 'method'>;
  private readonly conversionVerifiedCounter: Counter<'country' | 'method'>;
  private readonly smsSubmits: Counter<'smsc' | 'outcome'>;
  private readonly smsReceipts: Counter<'smsc' | 'state'>;
  private readonly smscSources: SmscStatusSource[] = [];
  private readonly callSources: ActiveCallsSource[] = [];
  private readonly trunkSources: TrunkStatusSource[] = [];
  private readonly rtpSources: RtpStatsSource[] = [];
  private readonly queues = new Map<string, JobCountsSource>();
  private rangeQuarantine: RangeQuarantineSource | undefined;
  private eventGroups: EventGroupsSource | undefined;
  private webhookBreakers: WebhookBreakersSource | undefined;
  private webhookConnections: WebhookConnectionsSource | undefined;
  private readonly apiShed: Counter;
  private apiInFlight: (() => number) | undefined;
  private webhookDns: WebhookDnsSource | undefined;

  constructor(options: { defaultMetrics?: boolean } = {}) {
    if (options.defaultMetrics ?? true) collectDefaultMetrics({ register: this.registry });
    const registers = [this.registry];
    // What runs where (a mixed fleet during an upgrade): always 1, the version in its labels.
    new Gauge({ name: 'flashverify_build_info', help: 'Always 1; labels: the flashverify and Node.js versions of this process', labelNames: ['version', 'node'], registers }).set(
      { version: VERSION, node: process.version },
      1,
    );
    this.callsStarted = new Counter({
      name: 'flashverify_calls_started_total',
      help: 'Calls whose INVITE was sent, by method and trunk',
      labelNames: ['method', 'trunk'],
      registers,
    });
    this.calls = new Counter({
      name: 'flashverify_calls_total',
      help: 'Finished calls by method, trunk and outcome (cancelled, answered, busy, no_ringing, timeout ...)',
      labelNames: ['method', 'trunk', 'outcome'],
      registers,
    });
    this.pdd = new Histogram({
      name: 'flashverify_post_dial_delay_seconds',
      help: 'Post-dial delay: INVITE sent to first ringing 18x, by trunk',
      labelNames: ['trunk'],
      // Up to the longest ringing timeout a trunk may have (sip.trunks[].ringingTimeoutMs, 120 s); the default is 15 s.
      buckets: [0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 7.5, 10, 15, 20, 30, 60, 120],
      registers,
    });
    this.trunkPings = new Counter({
      name: 'flashverify_trunk_pings_total',
      help: 'OPTIONS keep-alive pings to trunks by result: answered (any final response), timeout, unreachable',
      labelNames: ['trunk', 'result'],
      registers,
    });
    this.srvFailovers = new Counter({
      name: 'flashverify_srv_failovers_total',
      help:
        'Requests (method INVITE or OPTIONS) sent again to the next DNS SRV target of a trunk after failing at one (RFC 3263 4.3), ' +
        'by why they left it: unreachable (transport error), timeout (no response at all), service_unavailable (503)',
      labelNames: ['trunk', 'method', 'reason'],
      registers,
    });
    this.routeAdvances = new Counter({
      name: 'flashverify_route_advances_total',
      help:
        'Calls a trunk refused before they rang (unreachable, or a sip.trunkHealth.failureStatuses response) that were placed again on ' +
        'another live trunk (sip.routeAdvance), by method, the trunk that refused and why (unreachable, or sip_<status>)',
      labelNames: ['method', 'trunk', 'reason'],
      registers,
    });
    this.trunkLimitFallbacks = new Counter({
      name: 'flashverify_trunk_limit_fallbacks_total',
      help:
        'Times a worker kept to a trunk\'s limit (cps, or channels: maxCalls) on its own because Redis failed to count it across ' +
        'the worker processes (sip.trunkLimits: cluster); calls went on at this worker\'s own limits',
      labelNames: ['trunk', 'limit'],
      registers,
    });
    this.smscRateFallbacks = new Counter({
      name: 'flashverify_smsc_rate_fallbacks_total',
      help:
        'Times a worker kept to an SMSC account\'s sms.smscs[].accountTps on its own because Redis failed to count it across the ' +
        'worker processes; submits went on at this worker\'s own rate',
      labelNames: ['smsc'],
      registers,
    });
    this.jobLatencyHist = new Histogram({
      name: 'flashverify_job_latency_seconds',
      help: 'Job created to processing start, by queue',
      labelNames: ['queue'],
      buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers,
    });
    this.webhookFailures = new Counter({
      name: 'flashverify_webhook_failures_total',
      help: 'Failed webhook delivery attempts; final="true" when the event was given up',
      labelNames: ['final'],
      registers,
    });
    this.webhookDelivery = new Histogram({
      name: 'flashverify_webhook_delivery_seconds',
      help: 'Webhooks delivered (the receiver answered 2xx): time from resolving its host to its status line; the count is the webhooks delivered',
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers,
    });
    this.webhookLag = new Histogram({
      name: 'flashverify_webhook_lag_seconds',
      help: 'Webhooks delivered: time from their event written to the stream to the receiver\'s 2xx, waits for order, caps, breaker and retries included',
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600],
      registers,
    });
    this.webhookSkips = new Counter({
      name: 'flashverify_webhook_skipped_total',
      help: 'Webhook events not sent because they would contradict the final status the verification already has',
      registers,
    });
    this.webhookDeferrals = new Counter({
      name: 'flashverify_webhook_deferred_total',
      help:
        'Webhook deliveries put back to wait without spending an attempt: reason="breaker" (the account\'s breaker is open), ' +
        'reason="account_limit" (webhooks.accountConcurrency of the account in flight in this process)',
      labelNames: ['reason'],
      registers,
    });
    this.webhookDirects = new Counter({
      name: 'flashverify_webhook_direct_total',
      help:
        'Webhooks the consumer that read their event tried to send at once (webhooks.direct), by what came of it: ' +
        'result="done" (delivered, or not sent on purpose), result="queued" (a job waits: an earlier event, the breaker, ' +
        'a cap), result="retry" (the first try failed; a job retries)',
      labelNames: ['result'],
      registers,
    });
    this.webhookDnsLookups = new Counter({
      name: 'flashverify_webhook_dns_lookups_total',
      help: 'Webhook host lookups handed to the resolver (the system one: getaddrinfo on a libuv thread), cache misses and refreshes',
      registers,
    });
    this.webhookDnsCache = new Counter({
      name: 'flashverify_webhook_dns_cache_hits_total',
      help:
        'Webhook host answers taken from the cache without a lookup: answer="fresh" (within webhooks.dnsCacheMs), ' +
        'answer="stale" (expired, used while a new lookup failed or was slow), answer="failure" (a failed lookup kept webhooks.dnsNegativeCacheMs)',
      labelNames: ['answer'],
      registers,
    });
    this.webhookDnsFailures = new Counter({
      name: 'flashverify_webhook_dns_failures_total',
      help: 'Webhook host lookups that failed: reason="not_found" (no such name, or no address), reason="error" (any other: the resolver failed)',
      labelNames: ['reason'],
      registers,
    });
    this.webhookDnsTimeouts = new Counter({
      name: 'flashverify_webhook_dns_timeouts_total',
      help: 'Webhook deliveries that gave up waiting for their host\'s lookup (or a free lookup slot, webhooks.maxLookups) at their deadline',
      registers,
    });
    const breakersSource = (): WebhookBreakersSource | undefined => this.webhookBreakers;
    new Gauge({
      name: 'flashverify_webhook_breaker_open',
      help: 'Accounts whose webhook circuit breaker is open (deliveries deferred), over the deployment, read at scrape time',
      registers,
      async collect() {
        const open = await fromRedis(breakersSource()?.openCount());
        if (open !== undefined) this.set(open); // Redis slow or down: the last value stays
      },
    });
    this.apiShed = new Counter({
      name: 'flashverify_api_shed_total',
      help: '/v1 requests answered 503 at once, without any work, because api.maxInFlight requests were in progress in this process',
      registers,
    });
    /** A gauge read at scrape time from a source given later (watch...); none yet: no value. */
    const usageGauge = (name: string, help: string, read: () => number | undefined): void => {
      new Gauge({
        name,
        help,
        registers,
        collect() {
          const value = read();
          if (value !== undefined) this.set(value);
        },
      });
    };
    usageGauge('flashverify_api_requests_in_flight', '/v1 requests in progress in this process (limit: api.maxInFlight)', () => this.apiInFlight?.());
    usageGauge(
      'flashverify_webhook_connections_busy',
      'Webhook deliveries holding one of their receiver\'s connections (webhooks.maxSocketsPerHost per receiver), in this process',
      () => this.webhookConnections?.usage().held,
    );
    usageGauge(
      'flashverify_webhook_connections_waiting',
      'Webhook deliveries waiting for a free connection to their receiver (all busy), in this process; they fail at their deadline (webhooks.timeoutMs)',
      () => this.webhookConnections?.usage().waiting,
    );
    usageGauge(
      'flashverify_webhook_dns_lookups_running',
      'Webhook host lookups handed to the resolver and not ended, in this process (at most webhooks.maxLookups; each holds a thread of libuv\'s pool for the system resolver)',
      () => this.webhookDns?.stats().running,
    );
    usageGauge(
      'flashverify_webhook_dns_lookups_waiting',
      'Webhook host lookups waiting for one of those to end, in this process; their deliveries give up at their deadline (webhooks.timeoutMs)',
      () => this.webhookDns?.stats().waiting,
    );
    this.rangeSentCounter = new Counter({
      name: 'flashverify_range_sent_total',
      help: 'Flash calls delivered (rang or answered), by DID range prefix of the CLI',
      labelNames: ['range'],
      registers,
    });
    this.rangeVerifiedCounter = new Counter({
      name: 'flashverify_range_verified_total',
      help: 'Flash-call verifications verified, by DID range prefix of the CLI',
      labelNames: ['range'],
      registers,
    });
    // Country: ISO alpha-2 of the destination (a bounded set); method: flash_call, voice, sms.
    this.conversionSentCounter = new Counter({
      name: 'flashverify_conversion_sent_total',
      help: 'Verification sends (requests, resends and workflow steps), by destination country and method',
      labelNames: ['country', 'method'],
      registers,
    });
    this.conversionVerifiedCounter = new Counter({
      name: 'flashverify_conversion_verified_total',
      help: 'Verifications verified, by destination country and the method of the step that verified (test numbers excluded)',
      labelNames: ['country', 'method'],
      registers,
    });
    this.smsSubmits = new Counter({
      name: 'flashverify_sms_submits_total',
      help: 'submit_sm attempts by SMSC and outcome (accepted, failed, throttled, queue_full, timeout, connection_lost, no_bind)',
      labelNames: ['smsc', 'outcome'],
      registers,
    });
    this.smsReceipts = new Counter({
      name: 'flashverify_sms_receipts_total',
      help: 'Delivery receipts by SMSC and message state (DELIVRD, UNDELIV, REJECTD, EXPIRED, ...)',
      labelNames: ['smsc', 'state'],
      registers,
    });
    const smscSources = this.smscSources;
    const smscGauge = (name: string, help: string, read: (s: ReturnType<SmscStatusSource['status']>[number]) => number): void => {
      new Gauge({
        name,
        help,
        labelNames: ['smsc'],
        registers,
        collect() {
          for (const source of smscSources) for (const s of source.status()) this.set({ smsc: s.name }, read(s));
        },
      });
    };
    smscGauge('flashverify_smpp_binds_up', 'SMPP binds currently bound for submits, by SMSC', (s) => s.bindsUp);
    smscGauge(
      'flashverify_smpp_receivers_up',
      'SMPP binds whose receiving side is bound (receipts can come in), by SMSC: the receivers of bindMode transmitter_receiver, else the transceivers',
      (s) => s.receiversUp,
    );
    smscGauge('flashverify_smpp_binds_configured', 'SMPP binds configured, by SMSC', (s) => s.bindsConfigured);
    smscGauge(
      'flashverify_smpp_binds_started',
      'SMPP binds this process opens, by SMSC: all those configured, or its share of sms.smscs[].maxBinds (the account\'s binds over every worker)',
      (s) => s.bindsStarted,
    );
    smscGauge('flashverify_smpp_window_in_flight', 'submit_sm awaiting their response, by SMSC (window use)', (s) => s.inFlight);
    smscGauge('flashverify_smpp_window_size', 'Total window (in-flight submits allowed) over the binds that are up, by SMSC', (s) => s.window);
    const trunkSources = this.trunkSources;
    new Gauge({
      name: 'flashverify_trunk_up',
      help: 'SIP trunk health as this process sees it: 1 up, 0 marked down (unreachable/timeout in a row, retried with back-off)',
      labelNames: ['trunk'],
      registers,
      collect() {
        for (const source of trunkSources) for (const t of source.status()) this.set({ trunk: t.name }, t.up ? 1 : 0);
      },
    });
    new Gauge({
      name: 'flashverify_trunk_enabled',
      help: 'SIP trunk in service as this process last read it: 1, or 0 taken out by an operator (flashverify trunk disable, POST /admin/v1/trunks/{name}/disable)',
      labelNames: ['trunk'],
      registers,
      collect() {
        for (const source of trunkSources) for (const t of source.status()) this.set({ trunk: t.name }, t.enabled ? 1 : 0);
      },
    });
    new Gauge({
      name: 'flashverify_trunk_calls',
      help: 'Calls this process has on the trunk now (each holds one of its sip.trunks[].maxCalls channels when it has a cap)',
      labelNames: ['trunk'],
      registers,
      collect() {
        for (const source of trunkSources) for (const t of source.status()) this.set({ trunk: t.name }, t.calls);
      },
    });
    new Gauge({
      name: 'flashverify_trunk_calls_waiting',
      help: 'Calls of this process waiting for a channel of the trunk: every live trunk of their choice is at its sip.trunks[].maxCalls',
      labelNames: ['trunk'],
      registers,
      collect() {
        for (const source of trunkSources) for (const t of source.status()) this.set({ trunk: t.name }, t.waiting);
      },
    });
    const rtpSources = this.rtpSources;
    const rtpSum = (read: (s: RtpStatsSource) => number): number => rtpSources.reduce((n, s) => n + read(s), 0);
    new Counter({
      name: 'flashverify_rtp_packets_sent_total',
      help: 'RTP packets sent by the embedded media player (voice OTP), counted when each playback ends',
      registers,
      collect() {
        this.reset();
        this.inc(rtpSum((s) => s.stats.packets));
      },
    });
    new Counter({
      name: 'flashverify_rtp_packets_late_total',
      help:
        'RTP packets sent more than 5 ms after their due time, counted when each playback ends; ' +
        'when="on_wake": already that late when the RTP thread began its turn (the host did not run it, or its event loop was held), when="in_turn": the rest',
      labelNames: ['when'],
      registers,
      collect() {
        this.reset();
        const onWake = rtpSum((s) => s.stats.lateOnWake);
        this.inc({ when: 'on_wake' }, onWake);
        this.inc({ when: 'in_turn' }, rtpSum((s) => s.stats.lateOver5ms) - onWake);
      },
    });
    new Gauge({
      name: 'flashverify_rtp_sessions',
      help: 'Voice media sessions holding an RTP port of media.rtp.portMin..portMax in this process',
      registers,
      collect() {
        this.set(rtpSum((s) => s.activeSessions));
      },
    });
    const callSources = this.callSources;
    new Gauge({
      name: 'flashverify_active_calls',
      help: 'Calls in progress in the SIP stack of this process (not those ended and lingering for retransmissions)',
      registers,
      collect() {
        this.set(callSources.reduce((n, s) => n + s.activeCalls, 0));
      },
    });
    const quarantineSource = (): RangeQuarantineSource | undefined => this.rangeQuarantine;
    new Gauge({
      name: 'flashverify_range_quarantined',
      help: 'DID ranges taken out of rotation by range health (1 quarantined, 0 in use), by range prefix',
      labelNames: ['range'],
      registers,
      async collect() {
        const source = quarantineSource();
        // Redis slow or down: keep the last values rather than fail the scrape.
        const q = await fromRedis(source?.quarantined());
        if (!source || !q) return;
        for (const range of source.ranges) this.set({ range }, q.has(range) ? 1 : 0);
      },
    });
    const groupsSource = (): EventGroupsSource | undefined => this.eventGroups;
    const groupGauge = (name: string, help: string, field: 'pending' | 'lag') =>
      new Gauge({
        name,
        help,
        labelNames: ['group'],
        registers,
        async collect() {
          const groups = await fromRedis(groupsSource()?.eventGroups());
          if (!groups) return; // Redis slow or down: the last values stay
          for (const g of groups) if (g[field] !== undefined) this.set({ group: g.name }, g[field]);
        },
      });
    groupGauge('flashverify_events_group_pending', 'Events stream entries read by a consumer group and not yet acknowledged, by group, read at scrape time', 'pending');
    groupGauge(
      'flashverify_events_group_lag',
      'Events stream entries a consumer group has not read yet, by group, read at scrape time (XINFO GROUPS lag); entries trimmed from the stream (events.maxLen) before a group read them are lost to it',
      'lag',
    );
    const queues = this.queues;
    new Gauge({
      name: 'flashverify_queue_jobs',
      help: 'Jobs in a BullMQ queue by state (waiting, active, delayed), read at scrape time',
      labelNames: ['queue', 'state'],
      registers,
      async collect() {
        // Redis slow or down: the gauge keeps its last values (fromRedis).
        await Promise.all(
          [...queues].map(async ([name, q]) => {
            const counts = await fromRedis(q.getJobCounts(...DEPTH_STATES));
            if (!counts) return;
            for (const state of DEPTH_STATES) this.set({ queue: name, state }, counts[state] ?? 0);
          }),
        );
      },
    });
  }

  /** An INVITE is about to leave. */
  callStarted(method: string, trunk: string): void {
    this.callsStarted.inc({ method, trunk });
  }

  /** A call finished with `outcome`; `postDialDelayMs` when a ringing 18x arrived. */
  callEnded(method: string, trunk: string, outcome: string, postDialDelayMs?: number): void {
    this.calls.inc({ method, trunk, outcome });
    if (postDialDelayMs !== undefined) this.pdd.observe({ trunk }, postDialDelayMs / 1000);
  }

  /** An OPTIONS ping to `trunk` ended (pings the backend could not send are not counted). */
  trunkPing(trunk: string, result: 'answered' | 'timeout' | 'unreachable'): void {
    this.trunkPings.inc({ trunk, result });
  }

  /** A request to `trunk` failed at one of its SRV targets and went to the next (embedded stack). */
  srvFailover(event: { trunk: string; method: string; reason: string }): void {
    this.srvFailovers.inc({ trunk: event.trunk, method: event.method, reason: event.reason });
  }

  /** A call refused by `trunk` before it rang was placed again on another trunk (sip.routeAdvance). */
  routeAdvanced(method: string, trunk: string, reason: string): void {
    this.routeAdvances.inc({ method, trunk, reason });
  }

  /** Redis failed to count a trunk's `limit` across worker processes: this worker kept to it alone (sip.trunkLimits). */
  trunkLimitFellBack(trunk: string, limit: 'cps' | 'channels'): void {
    this.trunkLimitFallbacks.inc({ trunk, limit });
  }

  /** Redis failed to count an SMSC account's accountTps across worker processes: this worker kept to it alone. */
  smscRateFellBack(smsc: string): void {
    this.smscRateFallbacks.inc({ smsc });
  }

  /** A job moved to processing; `createdAt`/`startedAt` are epoch ms (BullMQ job.timestamp / processedOn). */
  jobStarted(queue: string, createdAt: number, startedAt: number = Date.now()): void {
    this.jobLatencyHist.observe({ queue }, Math.max(0, startedAt - createdAt) / 1000);
  }

  webhookFailed(final: boolean): void {
    this.webhookFailures.inc({ final: final ? 'true' : 'false' });
  }

  /**
   * A webhook delivered (2xx) in `seconds`, from resolving the receiver's host to its status line; `lagSeconds`: from
   * the event's stream entry to the 2xx (undefined: not known, a replayed event).
   */
  webhookDelivered(seconds: number, lagSeconds?: number): void {
    this.webhookDelivery.observe(seconds);
    if (lagSeconds !== undefined) this.webhookLag.observe(lagSeconds);
  }

  webhookSkipped(): void {
    this.webhookSkips.inc();
  }

  webhookDeferred(reason: 'breaker' | 'account_limit'): void {
    this.webhookDeferrals.inc({ reason });
  }

  webhookDirect(result: 'done' | 'queued' | 'retry'): void {
    this.webhookDirects.inc({ result });
  }

  /** A webhook host lookup was handed to the resolver. */
  webhookDnsLookup(): void {
    this.webhookDnsLookups.inc();
  }

  /** A webhook host's answer (or its failure) came from the cache. */
  webhookDnsCached(answer: 'fresh' | 'stale' | 'failure'): void {
    this.webhookDnsCache.inc({ answer });
  }

  webhookDnsFailed(reason: 'not_found' | 'error'): void {
    this.webhookDnsFailures.inc({ reason });
  }

  /** A delivery gave up waiting for its host's lookup at its deadline. */
  webhookDnsTimeout(): void {
    this.webhookDnsTimeouts.inc();
  }

  /** Report the webhook host lookups running and waiting in `flashverify_webhook_dns_lookups_running` / `_waiting`. */
  watchWebhookDns(source: WebhookDnsSource): void {
    this.webhookDns = source;
  }

  /** Report the accounts whose webhook breaker is open in `flashverify_webhook_breaker_open`. */
  watchWebhookBreakers(source: WebhookBreakersSource): void {
    this.webhookBreakers = source;
  }

  /** A /v1 request shed (503) because api.maxInFlight were in progress. */
  apiRequestShed(): void {
    this.apiShed.inc();
  }

  /** Report the /v1 requests in progress in `flashverify_api_requests_in_flight`. */
  watchApiInFlight(read: () => number): void {
    this.apiInFlight = read;
  }

  /** Report this process's webhook connections in `flashverify_webhook_connections_busy` / `_waiting`. */
  watchWebhookConnections(source: WebhookConnectionsSource): void {
    this.webhookConnections = source;
  }

  rangeSent(range: string): void {
    this.rangeSentCounter.inc({ range });
  }

  rangeVerified(range: string): void {
    this.rangeVerifiedCounter.inc({ range });
  }

  conversionSent(country: string, method: string): void {
    this.conversionSentCounter.inc({ country, method });
  }

  conversionVerified(country: string, method: string): void {
    this.conversionVerifiedCounter.inc({ country, method });
  }

  smsSubmitted(smsc: string, outcome: string): void {
    this.smsSubmits.inc({ smsc, outcome });
  }

  smsReceipt(smsc: string, state: string): void {
    this.smsReceipts.inc({ smsc, state });
  }

  /** Report binds and window use of an SMS gateway in the flashverify_smpp_* gauges. */
  watchSmsc(source: SmscStatusSource): void {
    this.smscSources.push(source);
  }

  /** Report this source's activeCalls in `flashverify_active_calls` (summed over sources). */
  watchActiveCalls(source: ActiveCallsSource): void {
    this.callSources.push(source);
  }

  /** Report an embedded media player's RTP counters (flashverify_rtp_*). */
  watchRtp(source: RtpStatsSource): void {
    this.rtpSources.push(source);
  }

  /** Report trunk health in `flashverify_trunk_up{trunk}`. */
  watchTrunks(source: TrunkStatusSource): void {
    this.trunkSources.push(source);
  }

  /** Report the events stream's consumer groups in `flashverify_events_group_pending{group}` and `..._lag{group}`. */
  watchEventGroups(source: EventGroupsSource): void {
    this.eventGroups = source;
  }

  /** Report quarantined DID ranges in `flashverify_range_quarantined{range}`. */
  watchRangeQuarantine(source: RangeQuarantineSource): void {
    this.rangeQuarantine = source;
  }

  /** Report this queue's depth in `flashverify_queue_jobs{queue}` (one Redis round trip per scrape). */
  watchQueue(name: string, queue: JobCountsSource): void {
    this.queues.set(name, queue);
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  /** The text exposition format. */
  render(): Promise<string> {
    return this.registry.metrics();
  }
}
