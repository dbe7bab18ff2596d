#!/usr/bin/env node
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { Worker, type ConnectionOptions, type Job } from 'bullmq';
import type { FastifyInstance } from 'fastify';
import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import { AccountNotFoundError, AccountStore } from './accounts/account-store.js';
import { AccountFieldCache } from './accounts/account-field-cache.js';
import { CURRENCIES, type Currency } from './accounts/money.js';
import { buildApi } from './api/app.js';
import { loadConfig } from './config/load.js';
import type { Config } from './config/schema.js';
import { resolveMasterKeys } from './crypto/master-key.js';
import { checkMasterKey } from './crypto/key-check.js';
import { Sealer } from './crypto/sealer.js';
import { failStrandedDelivery, strandedReason } from './engine/delivery-claim.js';
import { FlashProcessor } from './engine/flash-processor.js';
import { TrunkPacer } from './engine/trunk-pacer.js';
import { ClusterLimits, oncePer, SharedCount, SharedRate } from './engine/cluster-limits.js';
import { TrunkAdmin, TrunkAdminWatcher } from './engine/trunk-admin.js';
import { TrunkPinger } from './engine/trunk-pinger.js';
import { VoiceProcessor } from './engine/voice-processor.js';
import { SmsProcessor } from './engine/sms-processor.js';
import { BullDeliveryQueue, QUEUE_NAMES, type DeliveryJobData } from './engine/queues.js';
import { waitAtMost } from './async/time-limit.js';
import { AppError, ConfigError } from './errors/app-error.js';
import { listening } from './errors/listen-error.js';
import { VERSION } from './version.js';
import type { MediaPlayer } from './media/media-player.js';
import { EventPublisher } from './events/event-publisher.js';
import { StatusConsumer } from './events/status-consumer.js';
import { WebhookConsumer } from './events/webhook-consumer.js';
import { ensureEventGroups, eventGroupStates } from './events/event-groups.js';
import { WorkflowAdvancer } from './events/workflow-advancer.js';
import { BullStepTimer, STEP_TIMEOUT_QUEUE, fireStepTimeout, type StepTimeoutJobData } from './engine/step-timer.js';
import { WebhookProcessor } from './events/webhook-processor.js';
import { WEBHOOK_QUEUE, WebhookQueue, type WebhookJobData } from './events/webhook-queue.js';
import { describeGivenUp, givenUpWebhooks, replayGivenUp } from './events/webhook-replay.js';
import { createLogger } from './logging/logger.js';
import { MetricsServer, type ReadinessProbes } from './metrics/metrics-server.js';
import { Metrics } from './metrics/metrics.js';
import { RangeHealth } from './numbers/range-health.js';
import { RangeSelector } from './numbers/range-selector.js';
import type { CallOriginator } from './sip/call-originator.js';
import { trunkNeedsTls } from './sip/trunk-transport.js';
import { CounterBatch } from './store/counter-batch.js';
import { Keys } from './store/keys.js';
import { connectBullRedis, connectRedis, isRedisUnavailable, redisTakesWrites, RedisUnreachableError, StartAborted, waitForRedis } from './store/redis.js';
import { DELIVERABLE_METHODS, type Method } from './verification/types.js';
import { ExpirySweeper } from './verification/expiry-sweeper.js';
import { EnqueueReconciler } from './verification/enqueue-reconciler.js';
import type { ShutdownSignals } from './engine/flash-call.js';
import { FraudControls } from './verification/fraud-controls.js';
import { VerificationService } from './verification/verification-service.js';
import { watchWorkerErrors } from './engine/worker-errors.js';
import { RedisStallWatch } from './store/redis-stall.js';

export type Role = 'all' | 'api' | 'worker' | 'webhooks';

export interface Engine {
  /** HTTP address when the api role runs, e.g. http://127.0.0.1:8080. */
  readonly httpUrl: string | undefined;
  /** Bound SIP port when the worker role runs. */
  readonly sipPort: number | undefined;
  /** The operator listener (/metrics, /healthz, /readyz) of `--role worker` or `--role webhooks`, when metrics.port is not 0. */
  readonly metricsUrl: string | undefined;
  stop(): Promise<void>;
  /** While stop() runs: the shutdown phase it is in (named in the "shutdown grace exceeded" error). */
  readonly shutdownPhase: string | undefined;
}

/** Wires every module for the given role and starts it. The only place modules meet. */
export async function startEngine(config: Readonly<Config>, role: Role, logger: Logger, start: { abort?: AbortSignal } = {}): Promise<Engine> {
  const keysMaterial = resolveMasterKeys(config.security);
  if (keysMaterial.created) {
    logger.warn({ file: config.security.masterKeyFile }, 'no master key configured: generated one into this file; back it up');
  }
  const sealer = new Sealer(keysMaterial.current, keysMaterial.previous);
  const keys = new Keys(config.redis.prefix);
  // This process among the workers sharing trunk limits and SMSC binds in Redis (host, pid, and a random part: tests run several in one).
  const workerId = `${hostname()}-${process.pid}-${randomBytes(3).toString('hex')}`;
  const redis = connectRedis(config.redis, logger);
  // Delivery writes (events, record updates of calls in progress) wait for Redis to come back rather than fail mid-call.
  const durableRedis = connectRedis(config.redis, logger, { maxRetriesPerRequest: null });
  const bullConnection: ConnectionOptions = connectBullRedis(config.redis, logger);
  // The BullMQ workers whose jobs another process takes over when this one dies (delivery, webhook and step-timer jobs): a dead
  // process's job counts as stalled once its lock lapses, and runs again elsewhere at most maxStalledCount times.
  const stallOptions = {
    maxStalledCount: config.worker.maxStalledCount,
    lockDuration: config.worker.lockDurationMs,
    stalledInterval: config.worker.stalledIntervalMs,
  };
  const events = new EventPublisher(durableRedis, keys, config.events.maxLen);
  /** Shutdown steps, in order, each named for the shutdown log. */
  const stops: [string, () => Promise<unknown>][] = [];
  let shutdownPhase: string | undefined;
  // Graceful stop of the delivery workers (see stop() below): closed first, with the calls they hold.
  const workerCloses: (() => Promise<unknown>)[] = [];
  const consumers: { drain(timeoutMs: number): Promise<void> }[] = [];
  const draining = new AbortController();
  const expiring = new AbortController();
  const shutdown: ShutdownSignals = { draining: draining.signal, expiring: expiring.signal };
  let stopSip: (() => Promise<void>) | undefined;
  const methods = new Set<Method>(DELIVERABLE_METHODS);
  const metrics = new Metrics();
  // Conversion (verified, per range) and range-health counters of this process, written in one batch every 250 ms (closed, so
  // written, last in stop()). Sends are counted by the scripts that charge them (countSent.lua), not here.
  const counters = new CounterBatch(redis, logger.child({ module: 'counters' }));
  // Fraud controls (fraud.*): range health gets flash outcomes from the worker and conversions from the API.
  const rangeHealth = new RangeHealth({
    redis,
    keys,
    config: config.fraud.rangeHealth,
    ranges: config.numbers.ranges.map((r) => r.prefix),
    logger: logger.child({ module: 'range-health' }),
    counters,
  });
  metrics.watchRangeQuarantine(rangeHealth);
  metrics.watchEventGroups({ eventGroups: () => eventGroupStates(redis, keys) });
  const fraud = new FraudControls({ redis, keys, sealer, config, events, rangeHealth, metrics, logger: logger.child({ module: 'fraud' }), counters });
  const redisProbe = (): Promise<boolean> => redisTakesWrites(redis, keys.readyProbe());
  // Readiness of what this process runs besides Redis (the API adds its own Redis probe).
  const readiness: ReadinessProbes = {};

  let app: FastifyInstance | undefined;
  let sipPort: number | undefined;
  let metricsUrl: string | undefined;
  try {
    // Redis first, with a clear error when it is not there (ioredis would say only "max retries per request").
    await waitForRedis(redis, config.redis.url, config.redis.startupWaitMs, start.abort);
    await checkMasterKey(redis, keys.keyCheck(), sealer);
    // Every role writes events (the api: created, test numbers, checks; workers: call outcomes, possibly for jobs
    // another language's producer queued) and may do so before any consumer of a group ever started: the groups
    // exist first, so the webhooks group (which starts at "$") misses none of them.
    await ensureEventGroups(redis, keys, config.events);
    if (role === 'all' || role === 'worker') {
      // Loaded only by the worker role: the api role never opens SIP sockets.
      let sip: CallOriginator;
      if (config.sip.backend === 'drachtio') {
        const { DrachtioOriginator } = await import('./sip/drachtio/drachtio-originator.js');
        const { callTimeoutMs, ...drachtioOptions } = config.sip.drachtio;
        const drachtio = new DrachtioOriginator({
          ...drachtioOptions,
          callTimeoutMs: callTimeoutMs ?? 64 * config.sip.timers.t1Ms,
          userAgent: config.sip.userAgent,
          logger: logger.child({ module: 'sip' }),
        });
        stops.push(['drachtio', () => drachtio.stop()]);
        await drachtio.start();
        sip = drachtio;
        metrics.watchActiveCalls(drachtio);
        readiness.drachtio = () => drachtio.isConnected();
      } else {
        const { EmbeddedSipOriginator } = await import('./sip/embedded-originator.js');
        const originator = new EmbeddedSipOriginator({
          listen: config.sip.listen,
          udpMaxRequestBytes: config.sip.udpMaxRequestBytes,
          timers: config.sip.timers,
          userAgent: config.sip.userAgent,
          logger: logger.child({ module: 'sip' }),
          tls: config.sip.tls,
          trunks: config.sip.trunks,
          dns: config.sip.dns,
          onFailover: (event) => metrics.srvFailover(event),
        });
        await listening('SIP', config.sip.listen.host, config.sip.listen.port, 'sip.listen.host / sip.listen.port (SIP_LISTEN_PORT)', () => originator.start());
        // Via and Contact name 127.0.0.1 when the stack listens on every address and no advertisedHost is set: a
        // trunk elsewhere then has nowhere to send a 2xx retransmission or an in-dialog BYE.
        const remote = config.sip.trunks.filter((t) => !/^sips?:(?:[^@;]*@)?(?:127\.|localhost\b|\[::1\])/i.test(t.uri));
        if (!config.sip.listen.advertisedHost && ['0.0.0.0', '::'].includes(config.sip.listen.host) && remote.length) {
          logger.warn(
            { trunks: remote.map((t) => t.name), advertised: config.sip.listen.host === '::' ? '::1' : '127.0.0.1' },
            'sip.listen.advertisedHost is not set: Via and Contact carry a loopback address, which these trunks cannot reach; set it to this host\'s address as the trunks see it',
          );
        }
        sipPort = originator.localPort;
        sip = originator;
        stops.push(['sip stack', () => originator.stop()]);
        metrics.watchActiveCalls(originator);
        readiness.sip = () => originator.started;
        // A TLS trunk whose certificate does not verify (or whose handshake times out) fails every call to it. Not
        // ready once every TLS trunk fails so (a CA bundle or client certificate wrong for all: a deployment error);
        // one carrier's bad certificate leaves the others to carry the calls, as trunk health does, and is told by
        // the warn log (trunk and reason) and flashverify_trunk_up, not by taking every process out of service.
        const tlsTrunks = config.sip.trunks.filter((t) => trunkNeedsTls(t.uri)).map((t) => t.name);
        if (tlsTrunks.length > 0) {
          readiness.sip_tls = () => {
            const failing = originator.tlsFailures;
            return tlsTrunks.some((name) => !(name in failing));
          };
        }
      }
      const stopCalls = sip;
      stopSip = () => stopCalls.stop();
      // Shared by every channel: one CPS budget per trunk, one cooldown table per process.
      const trunkLog = logger.child({ module: 'trunks' });
      // sip.trunkLimits cluster (the default): each trunk's cps and maxCalls counted in Redis across worker processes.
      const clusterLimits =
        config.sip.trunkLimits === 'cluster'
          ? new ClusterLimits(redis, keys, workerId, {
              logger: trunkLog,
              onFallback: (trunk, limit) => metrics.trunkLimitFellBack(trunk, limit),
            })
          : undefined;
      const trunks = new TrunkPacer(
        config.sip.trunks,
        config.sip.trunkHealth,
        (trunk, up, detail) =>
          up
            ? trunkLog.info({ trunk }, 'trunk answers again; back in service')
            : trunkLog.warn({ trunk, ...detail }, detail.pinged ? 'trunk down; back once it answers an OPTIONS ping' : 'trunk down; retried after back-off'),
        Date.now,
        clusterLimits,
      );
      trunks.start();
      if (config.sip.trunks.every((t) => (t.prefixes ?? []).length > 0)) {
        trunkLog.info(
          { prefixes: [...new Set(config.sip.trunks.flatMap((t) => t.prefixes ?? []))] },
          'every SIP trunk has prefixes (no default route): calls to numbers none of them matches fail no_route',
        );
      }
      // After the delivery workers: their calls have ended, and this worker's channels no longer count in Redis.
      stops.push(['trunk channels', () => trunks.close()]);
      // Trunks an operator took out of service (flashverify trunk disable): read at start, then every second.
      const trunkAdmin = new TrunkAdminWatcher(redis, keys, config.sip.trunks, (disabled) => trunks.setDisabled(disabled), trunkLog);
      await trunkAdmin.start();
      stops.unshift(['trunk admin', async () => trunkAdmin.stop()]);
      metrics.watchTrunks(trunks);
      // A stopping worker no longer holds its claimed calls back for a trunk's channel (TrunkPacer.drain).
      draining.signal.addEventListener('abort', () => trunks.drain(), { once: true });
      // OPTIONS keep-alives to the trunks that have them on (sip.trunkHealth.optionsPingMs, sip.trunks[].optionsPingMs).
      const pinger = new TrunkPinger({
        originator: sip,
        pacer: trunks,
        trunks: config.sip.trunks,
        defaultIntervalMs: config.sip.trunkHealth.optionsPingMs,
        maxTimeoutMs: 64 * config.sip.timers.t1Ms,
        onResult: (trunk, result) => metrics.trunkPing(trunk, result),
        logger: trunkLog,
      });
      pinger.start();
      // A process going away pings no more from the start of its shutdown (and the phase stops them on a failed start).
      draining.signal.addEventListener('abort', () => pinger.stop(), { once: true });
      stops.unshift(['trunk pings', async () => pinger.stop()]);
      const ranges = new RangeSelector(
        config.numbers.ranges,
        durableRedis,
        keys,
        config.numbers.cliCooldownSeconds,
        (cli) => sealer.mac('cli', cli),
        rangeHealth,
        (cli) => sealer.previousMacs('cli', cli),
      );
      const flash = new FlashProcessor({
        redis: durableRedis,
        keys,
        sealer,
        config,
        originator: sip,
        ranges,
        trunks,
        events,
        metrics,
        logger: logger.child({ module: 'flash' }),
        shutdown,
        health: rangeHealth,
      });
      // One BullMQ worker per delivery queue; a job carries only the request id.
      const deliveryWorker = (
        method: Method,
        name: string,
        run: (requestId: string, job: Job<DeliveryJobData>, token: string | undefined) => Promise<unknown>,
        concurrency: number,
      ): void => {
        const queue = QUEUE_NAMES[method];
        const w = new Worker<DeliveryJobData>(
          queue,
          async (job, token) => {
            // A job back from a delay (SMS retry) was measured on its first run.
            if (!job.attemptsStarted || job.attemptsStarted <= 1) metrics.jobStarted(queue, job.timestamp, job.processedOn);
            await run(job.data.request_id, job, token);
          },
          {
            connection: bullConnection,
            prefix: keys.bullPrefix(),
            concurrency,
            ...stallOptions,
          },
        );
        w.on('failed', (job, err) => {
          const requestId = job?.data.request_id;
          const reason = strandedReason(err);
          logger.error({ request_id: requestId, job_id: job?.id, err: err.message, reason }, `${name} job failed`);
          if (!requestId) return;
          // Its attempt is over for good (attempts: 1, or stalled beyond maxStalledCount): the verification must not wait forever.
          failStrandedDelivery({ redis: durableRedis, keys, events }, { requestId, jobId: job?.id }, method, reason).then(
            (published) => published && logger.warn({ request_id: requestId, reason }, 'verification failed: its delivery job ended without an outcome'),
            (e: Error) => logger.error({ request_id: requestId, err: e.message }, 'could not fail the verification of a failed job'),
          );
        });
        watchWorkerErrors(w, logger, `${name} worker error`);
        workerCloses.push(() => w.close());
      };
      deliveryWorker('flash_call', 'flash', (id, job) => flash.process(id, job.id), config.worker.flashConcurrency);

      let player: MediaPlayer;
      if (config.media.backend === 'freeswitch') {
        // fsmrf reaches FreeSWITCH through drachtio-server (sip.drachtio): the pair is the carrier stack.
        if (config.sip.backend !== 'drachtio') {
          throw new ConfigError(['media.backend: freeswitch needs sip.backend: drachtio (FreeSWITCH is driven through drachtio-server)']);
        }
        const { startFreeswitchMedia } = await import('./media/freeswitch/start-freeswitch-media.js');
        const media = await startFreeswitchMedia(config, logger.child({ module: 'media' }));
        stops.push(['freeswitch media', () => media.stop()]);
        readiness.freeswitch = () => media.ready;
        player = media.player;
      } else {
        const { EmbeddedMediaPlayer } = await import('./media/rtp/embedded-media-player.js');
        const embedded = new EmbeddedMediaPlayer({
          bindHost: config.sip.listen.host,
          advertisedHost:
            config.media.rtp.advertisedHost ??
            config.sip.listen.advertisedHost ??
            ({ '0.0.0.0': '127.0.0.1', '::': '::1' }[config.sip.listen.host] ?? config.sip.listen.host),
          portMin: config.media.rtp.portMin,
          portMax: config.media.rtp.portMax,
          threadNice: config.media.rtp.threadNice ?? undefined,
          realtimePriority: config.media.rtp.realtimePriority ?? undefined,
          logger: logger.child({ module: 'media' }),
        });
        embedded.prompts.preload(); // a missing prompt file fails the boot, not a call
        metrics.watchRtp(embedded);
        stops.push(['rtp player', () => embedded.stop()]);
        player = embedded;
      }
      const voice = new VoiceProcessor({
        redis: durableRedis,
        keys,
        sealer,
        config,
        originator: sip,
        player,
        ranges,
        trunks,
        events,
        metrics,
        logger: logger.child({ module: 'voice' }),
        shutdown,
      });
      deliveryWorker('voice', 'voice', (id, job) => voice.process(id, job.id), config.worker.voiceConcurrency);

      if (config.sms.enabled) {
        // SMS OTP: SMPP binds to every configured SMSC; receipts come back through the same binds.
        const { SmppGateway, resolveSmscs } = await import('./sms/gateway.js');
        const smsAccounts = new AccountStore(redis, keys, sealer, { allowPrivateWebhooks: config.webhooks.allowPrivate });
        // An account's own templates are read for every SMS: reused for accounts.fieldCacheMs.
        const templateFields = new AccountFieldCache(redis, keys, { ttlMs: config.accounts.fieldCacheMs });
        const smsLog = logger.child({ module: 'sms' });
        const warnNow = oncePer(60_000);
        const gateway = new SmppGateway({
          smscs: resolveSmscs(config.sms),
          logger: smsLog,
          // sms.smscs[].accountTps: the SMSC account's rate, shared in Redis by every bind of every worker process.
          // sms.smscs[].maxBinds: the SMSC account's binds, shared in Redis by every worker process.
          bindSlots: (smsc) =>
            new SharedCount(redis, { count: keys.smscBinds(smsc.name), leases: keys.smscBindLeases(smsc.name), wants: keys.smscBindWants(smsc.name) }, workerId, smsc.maxBinds!, {
              onLeaveFailed: (err) => smsLog.warn({ smsc: smsc.name, err: err.message }, 'could not give back this worker\'s SMSC binds in Redis; they count until its lease lapses'),
            }),
          accountRate: (smsc) =>
            new SharedRate(redis, keys.smscRate(smsc.name), smsc.accountTps!, (err) => {
              metrics.smscRateFellBack(smsc.name);
              if (warnNow()) {
                smsLog.warn(
                  { smsc: smsc.name, err: err.message },
                  'could not reserve the SMSC account\'s submit slots in Redis; this worker keeps to accountTps alone until Redis answers',
                );
              }
            }),
        });
        // To wake a job waiting for its unconfirmed deadline when its submit is refused late.
        const smsJobs = new BullDeliveryQueue(bullConnection, keys.bullPrefix());
        const sms = new SmsProcessor({
          // The job's writes wait for Redis (full, a stall) as the calls' do; a receipt's first write fails fast.
          redis: durableRedis,
          receiptRedis: redis,
          keys,
          sealer,
          config,
          gateway,
          events,
          metrics,
          logger: logger.child({ module: 'sms' }),
          accountTemplate: (accountId, locale) => smsAccounts.smsTemplate(accountId, locale, templateFields),
          wakeJob: (jobId) => smsJobs.promote('sms', jobId),
        });
        gateway.onReceipt((receipt) => sms.handleReceipt(receipt));
        gateway.onLateResponse((request, outcome) => {
          sms.handleLateResponse(request, outcome).catch((err: Error) => logger.error({ request_id: request.requestId, err: err.message }, 'could not record a late submit_sm_resp'));
        });
        await gateway.start();
        metrics.watchSmsc(gateway);
        // An SMSC whose account binds are all held by other workers (maxBinds) is theirs to carry. With receipts asked
        // for, a bind must receive too: a refused receiver (transmitter_receiver) leaves every SMS `sent` for good.
        const receipts = config.sms.requestReceipts;
        readiness.smpp = () => gateway.status().every((s) => (s.bindsUp > 0 && (!receipts || s.receiversUp > 0)) || s.bindsStarted === 0);
        deliveryWorker('sms', 'sms', (_id, job, token) => sms.process(job, token), config.worker.smsConcurrency);
        // Binds close after the SMS worker stopped taking jobs (stops run in order; workers are unshifted first).
        stops.push(['smpp binds', () => gateway.stop()]);
        // After the binds: a late submit_sm_resp may still come while they close.
        stops.push(['sms job queue', () => smsJobs.close()]);
      }

      const consumer = new StatusConsumer(
        connectRedis(config.redis, logger),
        keys,
        config.events.consumerGroup,
        `${hostname()}-${process.pid}`,
        logger.child({ module: 'events' }),
        metrics,
        { claimIdleMs: config.events.claimIdleMs },
      );
      consumers.push(consumer);
      await consumer.start();
      stops.push(['status consumer', () => consumer.stop()]);

      // Workflows (verification/workflow.ts): step timers write step_timeout events; the advancer starts the next step.
      if (config.events.workflowGroup) {
        const stepQueue = new BullDeliveryQueue(bullConnection, keys.bullPrefix());
        const stepTimer = new BullStepTimer(bullConnection, keys.bullPrefix());
        stops.push(['workflow queues', () => Promise.all([stepQueue.close(), stepTimer.close()])]);
        const advancer = new WorkflowAdvancer(
          connectRedis(config.redis, logger),
          keys,
          config.events.workflowGroup,
          `${hostname()}-${process.pid}`,
          logger.child({ module: 'workflow' }),
          {
            sealer,
            config,
            timer: stepTimer,
            fraud,
            jobs: {
              enqueue: (method, requestId, jobId) => stepQueue.enqueue(method, requestId, jobId),
              discard: async (method, jobId) => void (await stepQueue.queue(method).remove(jobId)),
            },
          },
          { claimIdleMs: config.events.claimIdleMs },
        );
        consumers.push(advancer);
        await advancer.start();
        stops.push(['workflow advancer', () => advancer.stop()]);
        const timeoutWorker = new Worker<StepTimeoutJobData>(
          STEP_TIMEOUT_QUEUE,
          async (job) => void (await fireStepTimeout(durableRedis, keys, config.events.maxLen, job.data)),
          // A step's timer held by a process that died fires elsewhere once its lock lapses, as a delivery job would.
          { connection: bullConnection, prefix: keys.bullPrefix(), concurrency: 10, ...stallOptions },
        );
        watchWorkerErrors(timeoutWorker, logger, 'step timeout worker error');
        stops.unshift(['step timeout worker', () => timeoutWorker.close()]);
      }

      const sweeper = new ExpirySweeper(
        redis,
        keys,
        { intervalMs: config.verification.expirySweepMs, eventsMaxLen: config.events.maxLen },
        logger.child({ module: 'expiry' }),
      );
      sweeper.start();
      stops.unshift(['expiry sweeper', () => sweeper.stop()]);
      // Requests whose api process died between create and queue: queued again (idempotent, job id = request id).
      const requeue = new BullDeliveryQueue(bullConnection, keys.bullPrefix());
      // A workflow whose api died before its step-0 timer gets the timer here too (same job id).
      const requeueTimer = new BullStepTimer(bullConnection, keys.bullPrefix());
      const reconciler = new EnqueueReconciler(
        redis,
        keys,
        requeue,
        { requeueAfterMs: config.worker.requeueAfterMs, intervalMs: Math.min(5000, config.worker.requeueAfterMs) },
        logger.child({ module: 'reconcile' }),
        Date.now,
        requeueTimer,
        // A request it queues that no api did is counted in this process's flashverify_conversion_sent_total.
        fraud,
      );
      reconciler.start();
      stops.unshift(['enqueue reconciler', () => reconciler.stop().then(() => Promise.all([requeue.close(), requeueTimer.close()]))]);
    }

    // Webhooks: a consumer group reads the events and sends their webhooks at once (webhooks.direct); a BullMQ worker
    // sends those that must wait or be retried (and every one when webhooks.direct is false). In worker processes by default;
    // with webhooks.inWorkers: false only in `--role webhooks` processes, which can run on cores or hosts of their own:
    // then a receiver's HTTP work never shares the event loop, or the CPU, that originates calls (BENCHMARKS.md).
    if (role === 'webhooks' || ((role === 'all' || role === 'worker') && config.webhooks.inWorkers)) {
      const webhookQueue = new WebhookQueue(bullConnection, keys.bullPrefix(), config.webhooks);
      stops.push(['webhook queue', () => webhookQueue.close()]);
      metrics.watchQueue(WEBHOOK_QUEUE, webhookQueue.queue);
      // A webhook in flight past events.claimIdleMs would be reclaimed by another process and sent twice: a direct
      // send's wait for a slot and the send itself end well before (half the margin left, at most 10 s of wait).
      const directMarginMs = config.events.claimIdleMs - config.webhooks.timeoutMs - 1000;
      const direct = config.webhooks.direct && directMarginMs >= 0;
      const webhooks = new WebhookProcessor({
        redis,
        keys,
        sealer,
        config: config.webhooks,
        metrics,
        logger: logger.child({ module: 'webhooks' }),
        directWaitMs: Math.min(10_000, Math.floor(directMarginMs / 2)),
        heldJobs: webhookQueue,
      });
      metrics.watchWebhookBreakers(webhooks.breaker);
      metrics.watchWebhookConnections(webhooks.agents);
      metrics.watchWebhookDns(webhooks.hosts);
      if (config.webhooks.direct && !direct) {
        logger.warn(
          { timeout_ms: config.webhooks.timeoutMs, claim_idle_ms: config.events.claimIdleMs },
          'webhooks.direct is off: webhooks.timeoutMs must be at least 1000 ms below events.claimIdleMs; every webhook goes through the queue',
        );
      }
      const webhookConsumer = new WebhookConsumer(
        connectRedis(config.redis, logger),
        keys,
        config.events.webhookGroup,
        `${hostname()}-${process.pid}`,
        logger.child({ module: 'webhooks' }),
        webhookQueue,
        {
          claimIdleMs: config.events.claimIdleMs,
          fieldCacheMs: config.accounts.fieldCacheMs,
          // Direct sends: acknowledged on the shared connection; at stop, waited for as long as one may take.
          ackRedis: redis,
          settleTimeoutMs: config.webhooks.timeoutMs + 2000,
          // Direct sends in hand (sending, or waiting for their account's slots) at most 20 × webhooks.concurrency: under
          // a rate the slots cannot carry, later events wait in the stream, unread, instead of in memory until
          // directWaitMs turned them into jobs, whose deferrals cost three times a direct send's CPU and fell further
          // behind. (At 500 calls/s, 4 × carried 804-878 webhooks/s and 20 × 899-986/s; the runs overlap: BENCHMARKS.md.)
          maxUnsettled: direct ? 20 * config.webhooks.concurrency : undefined,
        },
        // webhooks.direct: an event's webhook goes out from here at once; a job only for one that must wait or retry.
        direct ? webhooks : undefined,
      );
      consumers.push(webhookConsumer);
      await webhookConsumer.start();
      stops.push(['webhook consumer', () => webhookConsumer.stop()]);

      const webhookWorker = new Worker<WebhookJobData>(
        WEBHOOK_QUEUE,
        (job, token) => {
          // Only a first run measures queueing: retries, order waits and deferrals (breaker, per-account cap) are delayed on purpose.
          if (!job.attemptsStarted || job.attemptsStarted <= 1) metrics.jobStarted(WEBHOOK_QUEUE, job.timestamp, job.processedOn);
          return webhooks.process(job, token);
        },
        { connection: bullConnection, prefix: keys.bullPrefix(), concurrency: config.webhooks.concurrency, ...stallOptions },
      );
      webhookWorker.on('failed', (job) => {
        webhooks.failed(job).catch((err: Error) => logger.warn({ err: err.message, event_id: job?.id }, 'could not mark a failed webhook done'));
      });
      watchWorkerErrors(webhookWorker, logger, 'webhook worker error');
      stops.unshift(['webhook worker', () => webhookWorker.close()]);
      // Stops run in order and the workers are unshifted: the pooled connections close once no delivery is in flight.
      stops.push(['webhook connections', async () => webhooks.close()]);
    } else if (role !== 'api') {
      logger.info('webhooks are sent by `--role webhooks` processes only (webhooks.inWorkers: false); run at least one');
    }
    if ((role === 'worker' || role === 'webhooks') && config.metrics.port !== 0) {
      const server = new MetricsServer({
        host: config.metrics.host,
        port: config.metrics.port,
        metrics: config.metrics.enabled ? metrics : undefined,
        readiness: { redis: redisProbe, ...readiness },
        logger: logger.child({ module: 'metrics' }),
      });
      await listening('/metrics and health', config.metrics.host, config.metrics.port, 'metrics.host / metrics.port', () => server.listen());
      stops.unshift(['metrics server', () => server.close()]);
      metricsUrl = server.url;
      logger.info({ url: metricsUrl }, 'metrics and health listening');
    }
    // Last: tests and supervisors take these lines as "serving".
    if (role === 'all' || role === 'worker') logger.info({ sip_port: sipPort, trunks: config.sip.trunks.map((t) => t.name) }, 'worker role started');
    if (role === 'webhooks') logger.info({ concurrency: config.webhooks.concurrency }, 'webhooks role started');

    if (role === 'all' || role === 'api') {
      const queue = new BullDeliveryQueue(bullConnection, keys.bullPrefix());
      stops.push(['api delivery queues', () => queue.close()]);
      for (const m of methods) metrics.watchQueue(QUEUE_NAMES[m], queue.queue(m));
      const accounts = new AccountStore(redis, keys, sealer, { allowPrivateWebhooks: config.webhooks.allowPrivate, authCacheMs: config.api.authCacheMs });
      const stepTimer = new BullStepTimer(bullConnection, keys.bullPrefix());
      stops.push(['api step timer', () => stepTimer.close()]);
      const verifications = new VerificationService(redis, keys, sealer, config, queue, logger.child({ module: 'verify' }), methods, fraud, stepTimer);
      // After the api closed (stops run in order, the api's first): the intents its last creates cleared.
      stops.push(['api enqueue intents', () => verifications.flush()]);
      // A Redis that answers nothing (hung, loading): new requests 503 at once rather than waiting on it.
      let redisStall: RedisStallWatch | undefined;
      if (config.redis.stallAfterMs > 0) {
        const stallRedis = connectRedis(config.redis, logger, { enableAutoPipelining: false });
        redisStall = new RedisStallWatch(stallRedis, { stallMs: config.redis.stallAfterMs, logger });
        redisStall.start();
        const watch = redisStall;
        stops.push(['redis stall watch', async () => {
          watch.stop();
          stallRedis.disconnect();
        }]);
      }
      const api = buildApi({ config, redis, keys, sealer, accounts, verifications, logger, metrics, readiness, fraud, ...(redisStall ? { redisStall } : {}) });
      app = api;
      await listening('the HTTP API', config.http.host, config.http.port, 'http.host / http.port (PORT)', () => api.listen({ host: config.http.host, port: config.http.port }));
      stops.unshift(['api', () => api.close()]);
    }
  } catch (err) {
    for (const [, stop] of stops) await stop().catch(() => undefined);
    redis.disconnect();
    durableRedis.disconnect();
    (bullConnection as Redis).disconnect();
    throw err;
  }

  const address = app?.server.address();
  const httpUrl =
    address && typeof address === 'object'
      ? `http://${address.family === 'IPv6' ? `[${address.address}]` : address.address}:${address.port}`
      : undefined;
  if (httpUrl) logger.info({ url: httpUrl }, 'api role listening');
  return {
    httpUrl,
    sipPort,
    metricsUrl,
    async stop() {
      // Graceful: the API stops first (stops[0] when it runs), then the delivery workers take no new
      // job; ringing flash calls are CANCELled at once, voice prompts play on until the grace is
      // nearly over (then BYE/CANCEL); the events of those calls are applied before the consumers stop.
      const started = Date.now();
      const grace = config.worker.shutdownGraceMs;
      const left = () => Math.max(100, grace - (Date.now() - started) - 200);
      /**
       * One shutdown phase: logged (debug) with its time, named in `shutdownPhase` while it runs, never thrown, and
       * given up (with a warning) when it outlasts what is left of the grace, at least half a second: the phases
       * after it still run (counters written, connections closed). BullMQ's Worker.close() is known to hang on a
       * Redis Cluster after the whole cluster was down and came back (about one close in six in a bench of three
       * workers; BullMQ issues 4656 and 4676 report the same wait for an `end` that never comes).
       */
      const phase = async (name: string, run: () => Promise<unknown>) => {
        const t = Date.now();
        shutdownPhase = name;
        logger.debug({ phase: name }, 'shutdown phase started');
        const finished = await waitAtMost(
          run().catch((err: Error) => logger.warn({ phase: name, err: err.message }, 'shutdown phase failed')),
          Math.max(500, left()),
        );
        if (finished) logger.debug({ phase: name, ms: Date.now() - t }, 'shutdown phase done');
        else logger.warn({ phase: name, ms: Date.now() - t }, 'shutdown phase did not finish within the grace; going on without it');
      };
      if (app) await phase('api', () => app!.close());
      draining.abort();
      shutdownPhase = 'delivery workers';
      // Room at the end for the CANCEL/BYE transactions and the event flush.
      const reserve = Math.min(3000, Math.floor(grace / 3));
      const expireTimer = setTimeout(() => expiring.abort(), grace - reserve);
      const closing = Promise.all(workerCloses.map((close) => close().catch((err: Error) => logger.warn({ err: err.message }, 'worker close failed'))));
      const inTime = await waitAtMost(closing, grace - Math.floor(reserve / 3));
      clearTimeout(expireTimer);
      logger.debug({ phase: shutdownPhase, ms: Date.now() - started, in_time: inTime }, 'shutdown phase done');
      if (!inTime) logger.warn('the delivery workers did not stop within the shutdown grace (calls still in progress, or Redis not answering); ending what is left');
      if (!inTime && stopSip) {
        // Calls still waiting for a final response: stopping the stack ends them (`shutdown`), so the jobs finish.
        await phase('calls left at the grace', async () => {
          await stopSip!();
          await waitAtMost(closing, Math.min(1000, left()));
        });
      }
      await phase('event consumers drain', () => Promise.all(consumers.map((c) => c.drain(left()).catch(() => undefined))));
      // The api's own entry (for a failed start) has been closed first, above.
      for (const [name, stop] of stops) if (name !== 'api') await phase(name, stop);
      // After every call and check has ended: their counters go out before the connection closes (a failure is logged by the batch).
      await phase('counters', () => counters.close());
      await phase('redis connections', () => Promise.all([redis, durableRedis, bullConnection as Redis].map((c) => c.quit().catch(() => undefined))));
      shutdownPhase = undefined;
    },
    get shutdownPhase() {
      return shutdownPhase;
    },
  };
}

const USAGE = `flashverify — phone-number verification engine (flash call, voice OTP, SMS OTP)

Usage:
  flashverify start [--role all|api|worker|webhooks] [--config FILE]
  flashverify --version
  flashverify account create --name NAME [--balance 10] [--currency GBP|USD|EUR] [--active]
  flashverify account show ACCOUNT_ID
  flashverify account approve ACCOUNT_ID
  flashverify account suspend ACCOUNT_ID
  flashverify account topup ACCOUNT_ID --amount 10
  flashverify account regenerate-secret ACCOUNT_ID
  flashverify account set-webhook ACCOUNT_ID (--url URL | --clear)
  flashverify account set-rate-limit ACCOUNT_ID (--rps N | --clear)
  flashverify account set-sms-template ACCOUNT_ID --locale fr (--template 'Code : {code}' | --clear)
  flashverify account set-fraud ACCOUNT_ID (--json '{"countries":{"allow":["GB"]}}' | --clear)
  flashverify trunk list
  flashverify trunk disable NAME [--reason 'carrier maintenance until 02:00']
  flashverify trunk enable NAME
  flashverify webhook failed ACCOUNT_ID [--request-id ID] [--since 2026-03-04T15:00:00Z]
  flashverify webhook replay ACCOUNT_ID [--request-id ID] [--since 2026-03-04T15:00:00Z]

Configuration: config/default.yaml, then --config FILE or FLASHVERIFY_CONFIG,
then environment variables (REDIS_URL, REDIS_PREFIX, REDIS_CLUSTER, PORT, HOST, SIP_TRUNK_URI,
SIP_LISTEN_PORT, METRICS_PORT, SMPP_URL, FLASHVERIFY_MASTER_KEY, FLASHVERIFY_ADMIN_TOKEN, LOG_LEVEL).`;

/** The CLI. Returns the exit code. */
export async function runCli(argv: string[]): Promise<number> {
  const { values, positionals, tokens } = parseArgs({
    args: argv,
    allowPositionals: true,
    strict: true,
    tokens: true,
    options: {
      role: { type: 'string', default: 'all' },
      config: { type: 'string' },
      name: { type: 'string' },
      balance: { type: 'string' },
      currency: { type: 'string' },
      active: { type: 'boolean', default: false },
      amount: { type: 'string' },
      url: { type: 'string' },
      clear: { type: 'boolean', default: false },
      rps: { type: 'string' },
      locale: { type: 'string' },
      template: { type: 'string' },
      json: { type: 'string' },
      'request-id': { type: 'string' },
      reason: { type: 'string' },
      since: { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
      version: { type: 'boolean', short: 'v', default: false },
    },
  });
  const [command, sub, id] = positionals;
  checkShape(positionals, tokens.flatMap((t) => (t.kind === 'option' ? [t.name] : [])));
  if (values.version) {
    process.stdout.write(`flashverify ${VERSION} (Node.js ${process.version})\n`);
    return 0;
  }
  if (values.help || !command) {
    process.stdout.write(USAGE + '\n');
    return command || values.help ? 0 : 2;
  }
  const config = loadConfig({ file: values.config });
  const logger = createLogger({ level: config.log.level, pretty: config.log.pretty });

  if (command === 'start') {
    const role = values.role as Role;
    if (!['all', 'api', 'worker', 'webhooks'].includes(role)) throw new AppError('usage', `--role must be all, api, worker or webhooks, not "${role}"`);
    logger.info({ version: VERSION, node: process.version, role }, 'flashverify starting');
    // Listening for the signal before the engine starts: one that comes while it starts (a supervisor
    // stopping it at once, or just after the start-up log line) is a graceful stop once it is up, not
    // Node's default of dying on the spot.
    let engine: Engine | undefined;
    // A signal while the start still waits for Redis ends that wait: nothing is running yet.
    const starting = new AbortController();
    let stopping = false;
    const signalled = new Promise<void>((resolve) => {
      const onSignal = (signal: string) => {
        // One stop, whichever signals come (a supervisor's SIGTERM after a terminal's SIGHUP, a second Ctrl-C ...):
        // the handlers stay (process.on), since without one Node's default would kill the process mid-stop.
        if (stopping) {
          logger.info({ signal, grace_ms: config.worker.shutdownGraceMs }, 'already shutting down; the stop ends within the grace');
          return;
        }
        stopping = true;
        logger.info({ signal }, 'shutting down');
        starting.abort();
        // Last resort: a stop step (or the rest of the start) that hangs (Redis gone ...) must not keep the
        // process past its grace (worker.shutdownGraceMs, counted from the signal): exit 1 then. stop()
        // plans to be done before.
        const hard = setTimeout(() => {
          logger.error({ grace_ms: config.worker.shutdownGraceMs, phase: engine?.shutdownPhase ?? 'start-up' }, 'shutdown grace exceeded; exiting');
          process.exit(1);
        }, config.worker.shutdownGraceMs);
        hard.unref();
        resolve();
      };
      process.on('SIGTERM', () => onSignal('SIGTERM'));
      process.on('SIGINT', () => onSignal('SIGINT'));
      // The terminal it ran in went away (an SSH session dropped under `npm start`): Node's default is to die on the
      // spot, dropping the calls in progress; a graceful stop ends them as SIGTERM does.
      process.on('SIGHUP', () => onSignal('SIGHUP'));
    });
    try {
      engine = await startEngine(config, role, logger, { abort: starting.signal });
    } catch (err) {
      if (!(err instanceof StartAborted)) throw err;
      logger.info(err.message);
      return 0;
    }
    await signalled;
    const stopStarted = Date.now();
    await engine.stop();
    logger.info({ ms: Date.now() - stopStarted }, 'stopped');
    return 0;
  }

  if (command === 'account') {
    const keysMaterial = resolveMasterKeys(config.security);
    const redis = connectRedis(config.redis, logger, { maxRetriesPerRequest: 1 });
    try {
      await waitForRedis(redis, config.redis.url, 0);
      const cliSealer = new Sealer(keysMaterial.current, keysMaterial.previous);
      await checkMasterKey(redis, new Keys(config.redis.prefix).keyCheck(), cliSealer);
      const store = new AccountStore(redis, new Keys(config.redis.prefix), cliSealer, {
        allowPrivateWebhooks: config.webhooks.allowPrivate,
      });
      const need = (v: string | undefined, what: string): string => required(`account ${sub}`, v, what);
      const amount = (v: string | undefined, what: string): number => {
        const text = need(v, what).trim();
        // Decimal, at most 6 places (money is kept in micro-units): no " " (0), 0x10 (16), 1e-7 (stored as 0).
        if (!/^\d+(\.\d{1,6})?$/.test(text)) {
          throw new AppError('usage', `${what} must be a non-negative decimal number with at most 6 decimal places, such as 10 or 0.25`);
        }
        return Number(text);
      };
      let out: unknown;
      switch (sub) {
        case 'create': {
          const currency = (values.currency ?? config.accounts.defaultCurrency) as Currency;
          if (!CURRENCIES.includes(currency)) throw new AppError('usage', `--currency must be one of ${CURRENCIES.join(', ')}`);
          out = await store.create({
            name: need(values.name, '--name'),
            balance: values.balance === undefined ? 0 : amount(values.balance, '--balance'),
            currency,
            active: values.active,
          });
          break;
        }
        case 'show':
          out = await store.get(need(id, 'ACCOUNT_ID'));
          break;
        case 'approve':
          out = await store.setStatus(need(id, 'ACCOUNT_ID'), 'active');
          break;
        case 'suspend':
          out = await store.setStatus(need(id, 'ACCOUNT_ID'), 'suspended');
          break;
        case 'topup':
          out = await store.topUp(need(id, 'ACCOUNT_ID'), amount(values.amount, '--amount'));
          break;
        case 'regenerate-secret':
          out = await store.regenerateSecret(need(id, 'ACCOUNT_ID'));
          break;
        case 'set-webhook':
          if (!values.clear) need(values.url, '--url (or --clear)');
          out = await store.setWebhook(need(id, 'ACCOUNT_ID'), values.clear ? null : values.url!);
          break;
        case 'set-rate-limit': {
          const rps = values.clear ? null : Number(need(values.rps, '--rps (or --clear)'));
          if (rps !== null && !(Number.isInteger(rps) && rps > 0)) throw new AppError('usage', '--rps must be a positive whole number');
          out = await store.setRateLimit(need(id, 'ACCOUNT_ID'), rps);
          break;
        }
        case 'set-sms-template':
          if (!values.clear) need(values.template, '--template (or --clear)');
          out = await store.setSmsTemplate(need(id, 'ACCOUNT_ID'), need(values.locale, '--locale'), values.clear ? null : values.template!);
          break;
        case 'set-fraud': {
          // Same overrides and validation as PUT /admin/v1/accounts/:id/fraud.
          let overrides: unknown = null;
          if (!values.clear) {
            try {
              overrides = JSON.parse(need(values.json, '--json (or --clear)')) as unknown;
            } catch (err) {
              if (err instanceof AppError) throw err;
              throw new AppError('usage', '--json must be a JSON object');
            }
          }
          const keys = new Keys(config.redis.prefix);
          const fraud = new FraudControls({
            redis,
            keys,
            sealer: new Sealer(keysMaterial.current, keysMaterial.previous),
            config,
            events: new EventPublisher(redis, keys, config.events.maxLen),
            logger,
          });
          const accountId = need(id, 'ACCOUNT_ID');
          out = { account_id: accountId, fraud: await fraud.setOverrides(accountId, overrides) };
          break;
        }
        default:
          throw new AppError('usage', `unknown account command "${sub ?? ''}"\n\n${USAGE}`);
      }
      process.stdout.write(JSON.stringify(out, null, 2) + '\n');
      return 0;
    } finally {
      redis.disconnect();
    }
  }
  if (command === 'trunk') {
    if (sub !== 'list' && sub !== 'disable' && sub !== 'enable') throw new AppError('usage', `unknown trunk command "${sub ?? ''}"\n\n${USAGE}`);
    const redis = connectRedis(config.redis, logger, { maxRetriesPerRequest: 1 });
    try {
      await waitForRedis(redis, config.redis.url, 0);
      const admin = new TrunkAdmin(redis, new Keys(config.redis.prefix), config.sip.trunks, config.sip.trunkLimits === 'cluster');
      const out =
        sub === 'list'
          ? await admin.list()
          : sub === 'disable'
            ? await admin.disable(required('trunk disable', id, 'NAME'), values.reason)
            : await admin.enable(required('trunk enable', id, 'NAME'));
      process.stdout.write(JSON.stringify(out, null, 2) + '\n');
      return 0;
    } finally {
      redis.disconnect();
    }
  }
  if (command === 'webhook') {
    if (sub !== 'failed' && sub !== 'replay') throw new AppError('usage', `unknown webhook command "${sub ?? ''}"\n\n${USAGE}`);
    const accountId = required(`webhook ${sub}`, id, 'ACCOUNT_ID');
    let since: number | undefined;
    if (values.since !== undefined) {
      // ISO 8601 with a date and a time (a zone, or UTC): what `failed` prints as failed_at.
      since = /^\d{4}-\d\d-\d\dT\d\d:\d\d(:\d\d(\.\d+)?)?(Z|[+-]\d\d:?\d\d)?$/.test(values.since) ? Date.parse(values.since) : NaN;
      if (Number.isNaN(since)) throw new AppError('usage', `--since must be an ISO 8601 date and time, e.g. 2026-03-04T15:00:00Z, not "${values.since}"`);
    }
    const keys = new Keys(config.redis.prefix);
    const redis = connectRedis(config.redis, logger, { maxRetriesPerRequest: 1 });
    const webhookQueue = new WebhookQueue(redis, keys.bullPrefix(), config.webhooks);
    try {
      await waitForRedis(redis, config.redis.url, 0);
      if (!(await redis.exists(keys.account(accountId)))) throw new AccountNotFoundError(accountId);
      if (sub === 'replay' && !(await redis.hget(keys.account(accountId), 'webhook_url'))) {
        throw new AppError('usage', `account ${accountId} has no webhook URL: set one first (account set-webhook), or the replayed events would be dropped`);
      }
      const jobs = await givenUpWebhooks(webhookQueue.queue, { accountId, requestId: values['request-id'], since });
      // One JSON line per webhook (stdout carries nothing else): the given-up ones, or those queued again.
      const lines = jobs.map(describeGivenUp);
      if (sub === 'replay') await replayGivenUp(redis, keys, jobs);
      for (const line of lines) process.stdout.write(JSON.stringify(line) + '\n');
      return 0;
    } finally {
      await webhookQueue.close();
      redis.disconnect();
    }
  }
  throw new AppError('usage', `unknown command "${command}"\n\n${USAGE}`);
}

/** What each command takes after its name: how many arguments, which options (besides --config, --help, --version). */
const SHAPES: Record<string, { args: number; options: readonly string[] }> = {
  start: { args: 0, options: ['role'] },
  'account create': { args: 0, options: ['name', 'balance', 'currency', 'active'] },
  'account show': { args: 1, options: [] },
  'account approve': { args: 1, options: [] },
  'account suspend': { args: 1, options: [] },
  'account regenerate-secret': { args: 1, options: [] },
  'account topup': { args: 1, options: ['amount'] },
  'account set-webhook': { args: 1, options: ['url', 'clear'] },
  'account set-rate-limit': { args: 1, options: ['rps', 'clear'] },
  'account set-sms-template': { args: 1, options: ['locale', 'template', 'clear'] },
  'account set-fraud': { args: 1, options: ['json', 'clear'] },
  'trunk list': { args: 0, options: [] },
  'trunk disable': { args: 1, options: ['reason'] },
  'trunk enable': { args: 1, options: [] },
  'webhook failed': { args: 1, options: ['request-id', 'since'] },
  'webhook replay': { args: 1, options: ['request-id', 'since'] },
};
const GLOBAL_OPTIONS = new Set(['config', 'help', 'version']);

/**
 * A command given more arguments than it takes (`account suspend A B` would suspend A alone), or an option of another
 * command (`account show A --amount 5`): a usage error (exit 2), never ignored. Unknown commands are left to runCli.
 */
function checkShape(positionals: readonly string[], options: readonly string[]): void {
  const [command, sub] = positionals;
  const name = command === 'start' ? 'start' : `${command ?? ''} ${sub ?? ''}`;
  const shape = SHAPES[name];
  if (shape === undefined) return;
  const extra = positionals.slice((command === 'start' ? 1 : 2) + shape.args);
  if (extra.length) throw new AppError('usage', `${name}: unexpected argument${extra.length > 1 ? 's' : ''} ${extra.map((a) => JSON.stringify(a)).join(' ')}\n\n${USAGE}`);
  const foreign = [...new Set(options.filter((o) => !GLOBAL_OPTIONS.has(o) && !shape.options.includes(o)))];
  if (foreign.length) throw new AppError('usage', `${name} does not take ${foreign.map((o) => `--${o}`).join(', ')}\n\n${USAGE}`);
}

/** A positional or option a command cannot do without. */
function required(command: string, v: string | undefined, what: string): string {
  if (!v) throw new AppError('usage', `${command}: ${what} is required\n\n${USAGE}`);
  return v;
}

function isMain(): boolean {
  if (!process.argv[1]) return false;
  try {
    return realpathSync(process.argv[1]) === realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
}

/**
 * Errors that say a value on the command line is wrong (exit 2): usage, an amount, a webhook URL, a locale or an SMS
 * template, a rate limit, fraud overrides (the admin API's 400 invalid_request), a trunk name not in sip.trunks.
 */
const BAD_VALUE_CODES: ReadonlySet<string> = new Set(['usage', 'invalid_amount', 'invalid_webhook_url', 'invalid_locale', 'sms_text', 'invalid_rate_limit', 'invalid_request', 'trunk_not_found']);

if (isMain()) {
  runCli(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (err: unknown) => {
      if (err instanceof ConfigError) process.stderr.write(`flashverify: ${err.message}\n`);
      else if (err instanceof AppError) {
        process.stderr.write(`flashverify: ${err.message}\n`);
        // A command line that is wrong (missing argument, unknown subcommand, a bad value): 2, as for an unknown option.
        if (BAD_VALUE_CODES.has(err.code)) return process.exit(2);
      } else if (err instanceof Error && 'code' in err && typeof err.code === 'string' && err.code.startsWith('ERR_PARSE_ARGS_')) {
        // An unknown option, a value that looks like an option (--balance -1: give --balance=-1), a stray argument.
        process.stderr.write(`flashverify: ${err.message}\n\n${USAGE}\n`);
        return process.exit(2);
      } else if (err instanceof Error && isRedisUnavailable(err)) {
        // Lost, or refusing writes (full, a replica) while a command ran: not a bug, no stack.
        process.stderr.write(`flashverify: Redis is unavailable: ${err.message}\n`);
        return process.exit(69);
      } else process.stderr.write(`flashverify: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
      // sysexits(3): EX_CONFIG for a bad configuration, EX_UNAVAILABLE for a Redis that is not there.
      process.exit(err instanceof ConfigError ? 78 : err instanceof RedisUnreachableError ? 69 : 1);
    },
  );
}
