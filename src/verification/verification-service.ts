import { randomUUID } from 'node:crypto';
import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import type { Account } from '../accounts/account-store.js';
import { fromMicro } from '../accounts/money.js';
import type { Config } from '../config/schema.js';
import { Sealer } from '../crypto/sealer.js';
import type { IdempotencyClaim } from '../api/idempotency.js';
import type { Keys } from '../store/keys.js';
import { BatchedZrem } from '../store/batched-zrem.js';
import { scripts } from '../store/scripts.js';
import { EventPublisher } from '../events/event-publisher.js';
import { webhookOrderLife } from '../events/webhook-queue.js';
import { CONVERSION_TTL_MS } from '../numbers/range-health.js';
import { generateCode } from './codes.js';
import { ApiError } from './errors.js';
import { velocityRefusal, type AdmittedSend, type FraudControls, type VelocityResult } from './fraud-controls.js';
import { findTestNumber, parseClientIp, screenDestination, screenWorkflow } from './fraud-rules.js';
import { parseDestination } from './phone.js';
import { priceMicro } from './pricing.js';
import { resendLive } from './resend.js';
import { attemptsBody, initialFields, parseWorkflow, readSteps, stepsBody, withoutMethods, type StepTimer } from './workflow.js';
import {
  METHODS,
  STATUSES,
  isoSeconds,
  utcDay,
  chargeDay,
  chargedAt,
  type CreatedBody,
  type Method,
  type Status,
  type StatusBody,
} from './types.js';

/** Hands an accepted verification to the delivery workers. Only the request id travels. */
export interface DeliveryQueue {
  /** `jobId` defaults to the request id; a resend has its own (`<request_id>-r<n>`). */
  enqueue(method: Method, requestId: string, jobId?: string): Promise<void>;
}

export interface CreateInput {
  phone_number?: unknown;
  method?: unknown;
  code_length?: unknown;
  expiry_seconds?: unknown;
  /** Voice only: language of the announcement (en, fr, es, de); default by destination country. */
  locale?: unknown;
  /** The end user's IP address (IPv4/IPv6), for the per-IP velocity limit. */
  client_ip?: unknown;
  /** true: when a verification of this number is live, send it again on the same request instead of 409. */
  resend?: unknown;
  /** Fallback steps (workflow.ts); exclusive with method. `"method": "auto"` is the configured default workflow. */
  workflow?: unknown;
}

const CREATE_FIELDS = new Set(['phone_number', 'method', 'code_length', 'expiry_seconds', 'locale', 'client_ip', 'resend', 'workflow']);
/** Languages voice prompts exist for (assets/prompts/<lang>/). */
const VOICE_LOCALES = ['en', 'fr', 'es', 'de'] as const;
const USAGE_TTL_SECONDS = 400 * 24 * 3600;

export interface CheckResult {
  request_id: string;
  status: 'verified';
  phone_number: string;
}

/**
 * The verification domain: create (validate, price, debit, store sealed,
 * enqueue), check (constant-time MAC comparison, atomic attempt count) and
 * status. Used by the HTTP API; later by the in-process producer too.
 */
export class VerificationService {
  constructor(
    private readonly redis: Redis,
    private readonly keys: Keys,
    private readonly sealer: Sealer,
    private readonly config: Readonly<Config>,
    private readonly queue: DeliveryQueue,
    private readonly logger: Logger,
    /** Methods whose delivery workers exist on this deployment. */
    private readonly availableMethods: ReadonlySet<Method>,
    /** Fraud and abuse controls (fraud-controls.ts); without them none apply. */
    private readonly fraud?: FraudControls,
    /** Step timeouts of workflows (workflow.ts); without it a workflow step only ends by failing. */
    private readonly stepTimer?: StepTimer,
  ) {
    this.intents = new BatchedZrem(redis, keys.unqueued());
  }

  /** Clears enqueue intents (`<prefix>:unqueued`) of concurrent requests in one ZREM. */
  private readonly intents: BatchedZrem;

  /** Writes what is still pending (the enqueue intents cleared by the last creates): before the connection closes. */
  async flush(): Promise<void> {
    await this.intents.flush();
  }

  /** `idempotency`: the request's Idempotency-Key claim; its 201 is stored by the create script with the request. */
  async create(account: Account, input: CreateInput, idempotency?: IdempotencyClaim): Promise<CreatedBody> {
    const unknown = Object.keys(input).filter((k) => !CREATE_FIELDS.has(k));
    if (unknown.length) {
      throw new ApiError('invalid_request', `unknown field(s): ${unknown.join(', ')}`);
    }
    const dest = parseDestination(input.phone_number);
    const vcfg = this.config.verification;
    const expirySeconds = parseExpiry(input.expiry_seconds, vcfg.defaultExpirySeconds, vcfg.maxExpirySeconds);
    const requested = parseWorkflow(input, this.config, expirySeconds, this.availableMethods);
    const single = requested ? undefined : parseMethod(input.method);
    if (single && !this.availableMethods.has(single)) {
      throw new ApiError('invalid_request', `method "${single}" is not available on this server`);
    }
    const singleCodeLength = single ? parseCodeLength(input.code_length, single) : 4;
    const locale = single ? parseLocale(input.locale, single) : input.locale !== undefined ? parseLocale(input.locale, 'voice') : undefined;
    const clientIp = parseClientIp(input.client_ip);
    if (input.resend !== undefined && typeof input.resend !== 'boolean') throw new ApiError('invalid_request', 'resend must be a boolean');

    const requestId = randomUUID();
    // Fraud controls, in this order: test numbers (exempt from the rest), country and number type,
    // one live request per number (409, or a resend), velocity windows.
    const fraud = this.fraud;
    const policy = fraud ? await fraud.policy(account.account_id) : undefined;
    const testNumber = policy ? findTestNumber(policy, dest.e164) : undefined;
    let workflow = requested;
    if (fraud && policy && !testNumber) {
      // Account state first (the create script checks it again, atomically): a 403 must not hide behind a 409 or 429.
      if (account.status === 'pending' || account.status === 'suspended') throw createError(`account_${account.status}`);
      if (workflow) {
        // Every step is screened up front: a flash step to a number that is not a mobile is a 400 naming the step,
        // except in the server's default workflow ("auto"), which then runs without its flash steps.
        const drop = screenWorkflow(policy, dest, workflow.map((s) => s.method), input.method === 'auto' ? 'leave_out' : 'refuse');
        if (drop.size) workflow = withoutMethods(workflow, drop);
      } else {
        screenDestination(policy, dest, single!);
      }
    }
    // A workflow request is created at its first step (workflow.ts): that step's method, code length and price.
    const method: Method = workflow ? workflow[0]!.method : single!;
    const codeLength = workflow ? workflow[0]!.code_length : singleCodeLength;
    if (testNumber && testNumber.code.length !== codeLength && (method === 'flash_call' || input.code_length !== undefined)) {
      throw new ApiError('invalid_request', `the code of test number ${dest.e164} has ${testNumber.code.length} digits; code_length must match`);
    }

    // A test number accepts its configured code, costs nothing and never reaches the network.
    const code = testNumber ? testNumber.code : generateCode(codeLength);
    const storedLength = testNumber ? testNumber.code.length : codeLength;
    const now = Date.now();
    const expiresAt = now + expirySeconds * 1000;
    const cost = testNumber ? 0 : priceMicro(this.config.pricing, method, dest.country, account.currency);
    // A test number never reaches the network: no steps. A workflow's fields go in with the record (createVerification-9).
    const steps = workflow && !testNumber ? workflow : undefined;
    const fields: Record<string, string> = {
      ...(locale !== undefined ? { locale } : {}),
      ...(testNumber ? { test_number: '1' } : {}),
      ...(steps ? initialFields(steps, cost, now) : {}),
    };
    // The webhook order set is created with the request, and its events are filed in it as they are written.
    const order = webhookOrderLife(now, expiresAt);
    // The 201, known before the create: with an Idempotency-Key, the create script stores it with the request.
    const body: CreatedBody = {
      ...created(requestId, dest.e164, method, storedLength, cost, account.currency, expiresAt),
      ...(steps ? { workflow: stepsBody(steps) } : {}),
    };
    const createKeys = [
      this.keys.account(account.account_id),
      this.keys.verification(requestId),
      this.keys.events(),
      this.keys.usage(account.account_id, utcDay(now)),
      this.keys.expiries(),
      // The intent to queue, filed by the script with the record: if this process dies before the job is queued,
      // the enqueue reconciler finds the request there.
      this.keys.unqueued(),
      this.keys.webhookOrder(requestId),
      // The send is counted in today's conversion `sent` by the script, with its charge: whichever process queues
      // the job (this one, or the reconciler after it died), it is counted once (countSent.lua).
      this.keys.conversion(utcDay(now)),
      idempotency?.key ?? this.keys.verification(requestId),
    ];
    const createArgs = [
      requestId,
      account.account_id,
      method,
      cost,
      now,
      expiresAt,
      expirySeconds + vcfg.retentionSeconds,
      this.sealer.seal(dest.e164, `phone:${requestId}`),
      this.codeMac(requestId, code),
      this.sealer.seal(code, `code:${requestId}`),
      storedLength,
      dest.country,
      this.config.events.maxLen,
      USAGE_TTL_SECONDS,
      Object.entries(fields).flat().join('\n'),
      order.ttlSeconds,
      order.recordUntil,
      CONVERSION_TTL_MS,
      idempotency ? idempotency.record({ status: 201, body }) : '',
      idempotency?.ttlSeconds ?? 0,
    ];

    let live: { key: string; expected: string } | undefined;
    let admitted: AdmittedSend | undefined;
    /** The create script's answer, when the one-step create below gave it. */
    let result: [string, string | number] | undefined;
    if (fraud && policy && !testNumber) {
      const liveKey = await fraud.liveKey(account.account_id, policy, dest.e164, workflow ? 'workflow' : method);
      const send = await fraud.planSend(account.account_id, policy, dest.e164, clientIp);
      // Most numbers have no live verification: one script claims the pointer, admits the send in the velocity
      // windows and creates the record (createAdmitted-13), and lets go of what it did when a later part refuses.
      // Only a pointer that is there is read (a live request: 409 or a resend; a lapsed one: taken over by
      // compare-and-set), on the path below.
      const first = (await scripts.createAdmitted.run(
        this.redis,
        [...createKeys, liveKey ?? createKeys[1]!, ...send.keys],
        [...createArgs, liveKey ? expirySeconds * 1000 : '', ...send.args],
      )) as [string, string | number, number?];
      if (first[0] === 'limited') throw velocityRefusal(send, first as VelocityResult);
      if (first[0] !== 'live') result = [first[0], first[1]];
      else {
        const pointerKey = liveKey!; // "live" is only answered with a pointer key
        const found = await fraud.live(pointerKey, account.account_id);
        if (found.live && input.resend === true && found.live.workflow) throw workflowResend(found.live.requestId);
        if (found.live && input.resend === true && found.live.method === method) {
          const deps = { redis: this.redis, keys: this.keys, sealer: this.sealer, config: this.config, queue: this.queue, fraud, logger: this.logger };
          return resendLive(deps, account, { requestId: found.live.requestId, method }, dest, policy, clientIp, idempotency);
        }
        if (found.live) throw pending(found.live.requestId, found.live.method ?? method, method, found.live.workflow);
        live = { key: pointerKey, expected: found.pointer };
        if (!(await fraud.claimLive(live.key, live.expected, requestId, expirySeconds * 1000))) {
          // Another request for this number won the race: a duplicate, not a send (no velocity counted).
          const winner = await fraud.live(live.key, account.account_id);
          throw pending(winner.live?.requestId ?? winner.pointer, winner.live?.method ?? method, method, winner.live?.workflow ?? false);
        }
        const claimed = live;
        admitted = await fraud.admitPlanned(send).catch(async (err: unknown) => {
          await fraud.releaseLive(claimed.key, requestId);
          throw err;
        });
      }
    }
    if (result === undefined) {
      const releaseFraud = async (): Promise<void> => {
        if (admitted) await fraud?.releaseSend(admitted);
        if (live) await fraud?.releaseLive(live.key, requestId);
      };
      result = (await scripts.createVerification.run(this.redis, createKeys, createArgs).catch(async (err: unknown) => {
        await releaseFraud();
        throw err;
      })) as [string, string | number];
      if (result[0] !== 'ok') await releaseFraud();
    }
    // A refusal of the one-step create let go of its pointer and send itself.
    if (result[0] !== 'ok') throw createError(String(result[1]));
    const log = this.logger.child({ request_id: requestId, account_id: account.account_id });
    // The step-0 timer goes before the job (workflow.ts). If this process dies before either, or the timer cannot be
    // added now, the intent stays filed and the reconciler adds them (same job ids).
    const t0 = steps?.[0]!.timeout_seconds;
    let timerMissing = false;
    if (t0 !== undefined && this.stepTimer) {
      await this.stepTimer.schedule(requestId, 0, t0 * 1000).catch((err: Error) => {
        timerMissing = true;
        log.warn({ err: err.message }, 'could not add the step-0 timer; the reconciler will');
      });
    }
    if (testNumber && fraud) {
      // Its simulated delivery, then the intent: a process dying in between leaves the intent, and the reconciler
      // simulates the delivery (never a job: a test number is never dialled); the other way round it would stay `sent`.
      await fraud.deliverTestNumber({ request_id: requestId, account_id: account.account_id, method });
      await this.intents.remove(requestId);
      log.info({ method, test_number: true }, 'verification created for a test number; not sent');
      return body;
    }
    try {
      await this.queue.enqueue(method, requestId);
    } catch (err) {
      // Not handed to a worker: fail it (with a refund) rather than leave it hanging. Its event below carries the same
      // time as the record's at_failed: a later `failed` of the request is a second report of its end (webhook-processor.ts).
      const failedAt = Date.now();
      const refunded = await scripts.applyEvent
        .run(
          this.redis,
          [
            this.keys.verification(requestId),
            this.keys.account(account.account_id),
            this.keys.usage(account.account_id, utcDay(now)),
            this.keys.conversion(utcDay(now)),
          ],
          // Counted in the conversion `sent` by the create script: the refund takes it out again ('1').
          ['failed', failedAt, 'failure_reason\nenqueue_failed', '1', '1'],
        )
        .then(() => this.redis.zrem(this.keys.unqueued(), requestId))
        .then(
          () => true,
          () => false,
        );
      if (refunded) {
        log.error({ err, refunded }, 'enqueue failed; verification failed and refunded');
        // Its `sent` event is in the stream (a webhook may have carried it): the end goes there too, so that webhooks
        // and stream readers see the request end rather than stay `sent`. The status consumer finds it failed already.
        await new EventPublisher(this.redis, this.keys, this.config.events.maxLen)
          .publish({ request_id: requestId, account_id: account.account_id, method, status: 'failed', timestamp: failedAt, detail: { reason: 'enqueue_failed' } })
          .catch((e: Error) => log.warn({ err: e.message }, 'could not write the failed event of a verification not queued'));
        throw new ApiError('service_unavailable', 'could not queue the verification; it was not charged');
      }
      // Created and charged, and neither queued nor failed: its enqueue intent stays, so the reconciler queues it
      // (worker.requeueAfterMs). It exists and will be sent: a 503 would have the client send another (and be
      // charged twice) for a request that goes ahead all the same.
      log.error({ err }, 'enqueue failed; the reconciler will queue it');
      fraud?.trackSent(dest.country, method);
      return body;
    }
    // Handed over. The intent is cleared with those of concurrent requests, in one ZREM, and the 201 does not wait
    // for it: if it fails or this process dies first, the reconciler finds the request queued (job id = request id,
    // or dial_started set) and only removes the intent.
    if (!timerMissing) this.intents.remove(requestId).catch((err: Error) => log.warn({ err: err.message }, 'could not clear the enqueue intent; the reconciler will'));
    fraud?.trackSent(dest.country, method);
    log.info({ method, country: dest.country, code_length: codeLength }, 'verification created');
    return body;
  }

  async check(account: Account, input: { request_id?: unknown; code?: unknown }): Promise<CheckResult> {
    const unknown = Object.keys(input).filter((k) => k !== 'request_id' && k !== 'code');
    if (unknown.length) throw new ApiError('invalid_request', `unknown field(s): ${unknown.join(', ')}`);
    if (typeof input.request_id !== 'string' || input.request_id === '') {
      throw new ApiError('invalid_request', 'request_id is required and must be a string');
    }
    if (typeof input.code !== 'string' || input.code === '') {
      throw new ApiError('invalid_request', 'code is required and must be a string of digits');
    }
    // As users copy or type it: "482 916", " 4829 ", "482-916", and the same in another script's digits ("٤٨٢٩١٦",
    // a keyboard in Arabic; full-width "４８２９"), are 482916. A code of the wrong length is a wrong code (counted);
    // anything else but digits can never be one: refused without spending one of the request's attempts.
    const code = asciiDigits(input.code).replace(/[\s-]/g, '');
    if (!/^\d{1,64}$/.test(code)) throw new ApiError('invalid_request', 'code must be a string of digits');
    const requestId = canonicalRequestId(input.request_id);
    const key = this.ownedKey(requestId);
    const log = this.logger.child({ request_id: requestId, account_id: account.account_id });
    let stored: (string | null)[] = [];
    let result = 'stale';
    let remaining = 0;
    let matched = false;
    // 'stale': the code changed between our read and the script (a workflow step started, a flash call picked a
    // new code): compare again with the new one, a couple of times at most; nothing was counted meanwhile.
    for (let tries = 0; result === 'stale' && tries < 3; tries++) {
      stored = await this.redis.hmget(
        key,
        ...['account_id', 'code_mac', 'phone_enc', 'country', 'method', 'cli_range', 'dial_started', 'test_number'],
        ...['status', 'wf_step', 'attempts', 'last_send_at', 'created_at', 'cli_quarantined'],
      );
      const [owner, mac, phoneEnc, , current, , , , status, wfStep, attempts, lastSendAt, createdAt] = stored;
      if (!owner || owner !== account.account_id || !mac || !phoneEnc) throw notFound();
      // Constant-time comparison of MACs (digits only by now: other characters were refused above, no attempt spent).
      // (a code issued before a master key rotation is MACed with the previous key: `matches` accepts both)
      matched = this.sealer.matches('code', `${requestId}:${code}`, mac) !== false;
      if (!matched && Number(wfStep) > 0 && (status === 'sent' || status === 'delivered')) {
        // The right code of a step that has ended: say so (the user has the new step's code coming), and do not
        // spend an attempt on it.
        const earlier = await this.earlierStepOf(key, requestId, code, Number(wfStep));
        if (earlier) {
          const left = Math.max(0, this.config.verification.maxCheckAttempts - Number(attempts ?? 0));
          log.info({ step: earlier.step, attempts_remaining: left }, 'code of an earlier workflow step checked');
          throw new ApiError(
            'invalid_code',
            `That is the code of workflow[${earlier.step}] (${earlier.method}), which has ended; this verification is now at workflow[${wfStep}] (${current}): enter the code sent by ${current}`,
            { attempts_remaining: left },
          );
        }
      }
      const now = Date.now();
      // `successful` in /v1/usage goes on the day the attempt was charged (and counted), as its refund would: a
      // check after midnight must not count a success on a day without its verification. A new step or send between
      // this read and the script changes the code's MAC too: 'stale', read again.
      const charged: Record<string, string | undefined> = { wf_step: wfStep ?? undefined, last_send_at: lastSendAt ?? undefined, created_at: createdAt ?? undefined };
      if (wfStep !== null) charged[`att${wfStep}_started_at`] = (await this.redis.hget(key, `att${wfStep}_started_at`)) ?? undefined;
      const day = chargeDay(charged);
      [result, remaining] = (await scripts.recordCheck.run(
        this.redis,
        [
          key,
          this.keys.events(),
          this.keys.usage(account.account_id, day),
          this.keys.webhookOrder(requestId),
          this.keys.account(account.account_id),
          this.keys.conversion(day),
        ],
        [mac, matched ? '1' : '0', now, this.config.verification.maxCheckAttempts, this.config.events.maxLen, USAGE_TTL_SECONDS],
      )) as [string, number];
    }
    const [, , phoneEnc, country, method, cliRange, dialStarted, testNumber] = stored;
    log.info({ result, attempts_remaining: remaining }, 'code checked');
    switch (result) {
      case 'verified':
        // Conversion per country and DID range (a test number was never sent: not counted); a failure here must not fail a verified check.
        if (!testNumber) {
          await this.fraud
            ?.trackVerified({ country, method, cliRange, sentAt: dialStarted ? Number(dialStarted) : undefined, cliQuarantined: stored[13] === '1' })
            .catch((err: Error) => log.warn({ err: err.message }, 'could not record the conversion'));
        }
        return { request_id: requestId, status: 'verified', phone_number: this.sealer.open(phoneEnc!, `phone:${requestId}`) };
      case 'invalid_code':
        throw new ApiError('invalid_code', undefined, { attempts_remaining: remaining });
      case 'expired':
        throw new ApiError('verification_expired');
      case 'already_verified':
        // The right code again (a client retrying a check whose answer it lost): the same answer, nothing counted.
        if (matched) return { request_id: requestId, status: 'verified', phone_number: this.sealer.open(phoneEnc!, `phone:${requestId}`) };
        throw new ApiError('verification_expired', 'This verification has already been completed');
      case 'failed':
        throw new ApiError('verification_expired', 'Delivery of this verification failed; start a new one');
      case 'canceled':
        throw new ApiError('verification_expired', 'This verification was canceled');
      case 'not_found':
        throw notFound();
      default:
        // Still stale after retries (the code keeps changing): not the code of now; nothing was counted.
        throw new ApiError('invalid_code', 'Incorrect code', { attempts_remaining: remaining });
    }
  }

  async status(account: Account, id: string): Promise<StatusBody> {
    const requestId = canonicalRequestId(id);
    const h = await this.redis.hgetall(this.ownedKey(requestId));
    if (!h.account_id || h.account_id !== account.account_id) throw notFound();
    const now = Date.now();
    let status = (h.status ?? 'sent') as Status;
    const expiresAt = Number(h.expires_at);
    const history = STATUSES.filter((s) => h[`at_${s}`] !== undefined)
      .map((s) => ({ status: s, ms: Number(h[`at_${s}`]) }))
      .sort((a, b) => a.ms - b.ms);
    if ((status === 'sent' || status === 'delivered') && now >= expiresAt) {
      status = 'expired';
      history.push({ status: 'expired', ms: expiresAt });
    }
    const body: StatusBody = {
      request_id: requestId,
      phone_number: this.sealer.open(h.phone_enc ?? '', `phone:${requestId}`),
      method: h.method as Method,
      status,
      cost: { amount: fromMicro(Number(h.cost ?? 0)), currency: account.currency },
      created_at: isoSeconds(Number(h.created_at)),
      verified_at: h.verified_at ? isoSeconds(Number(h.verified_at)) : null,
      expires_at: isoSeconds(expiresAt),
      status_history: history.map((e) => ({ status: e.status, at: isoSeconds(e.ms) })),
    };
    if (status === 'failed' && h.failure_reason) body.failure_reason = h.failure_reason;
    const steps = readSteps(h);
    if (steps) {
      body.workflow = stepsBody(steps);
      body.attempts = attemptsBody(status === 'expired' ? { ...h, status, at_expired: h.at_expired ?? String(expiresAt) } : h, account.currency);
    }
    return body;
  }

  /** The earlier workflow step (before `current`) whose code `code` is, if any (each keeps its code's MAC). */
  private async earlierStepOf(key: string, requestId: string, code: string, current: number): Promise<{ step: number; method: string } | undefined> {
    const fields = Array.from({ length: current }, (_, n) => [`att${n}_code_mac`, `att${n}_method`]).flat();
    const read = await this.redis.hmget(key, ...fields);
    for (let n = 0; n < current; n++) {
      const mac = read[2 * n];
      if (mac && this.sealer.matches('code', `${requestId}:${code}`, mac) !== false) return { step: n, method: read[2 * n + 1] ?? 'unknown' };
    }
    return undefined;
  }

  /**
   * POST /v1/verify/{id}/cancel: a live verification becomes `canceled`; its
   * pending steps never start (delivery jobs and timers find it final) and a
   * step not dialled yet is refunded, and taken out of /v1/usage. A voice
   * call in progress is ended by its worker (CANCEL, or BYE before the code
   * is read); a flash call ringing is CANCELled (its caller ID was shown: billed).
   */
  async cancel(account: Account, id: string): Promise<StatusBody> {
    const requestId = canonicalRequestId(id);
    const key = this.ownedKey(requestId);
    let result = 'moved';
    let value: string | number | undefined;
    // 'moved': a workflow step started or a resend was paid between the read and the script (maybe on another day);
    // read again. Each retry follows a new charge, and a request has few of them.
    for (let tries = 0; result === 'moved' && tries < 5; tries++) {
      // The day of the attempt (or send) a refund would take back: the one it was charged on.
      const h = await this.redis.hgetall(key);
      const day = chargeDay(h);
      [result, value] = (await scripts.cancelVerification.run(
        this.redis,
        [
          key,
          this.keys.account(account.account_id),
          this.keys.events(),
          this.keys.usage(account.account_id, day),
          this.keys.conversion(day),
          this.keys.webhookOrder(requestId),
        ],
        [account.account_id, Date.now(), this.config.events.maxLen, chargedAt(h) ?? ''],
      )) as [string, string | number | undefined];
    }
    if (result === 'moved') throw new ApiError('service_unavailable', 'the verification kept changing while it was being canceled; retry');
    if (result === 'not_found') throw notFound();
    if (result !== 'ok') throw new ApiError('verification_expired', `This verification has already finished (${String(value ?? 'expired')}); nothing to cancel`);
    this.logger.child({ request_id: requestId, account_id: account.account_id }).info({ refunded_micro: Number(value) }, 'verification canceled');
    return this.status(account, requestId);
  }

  private codeMac(requestId: string, code: string): string {
    return this.sealer.mac('code', `${requestId}:${code}`);
  }

  /** Ids are UUIDs; anything else (path traversal, key injection) is simply not found. */
  private ownedKey(requestId: string): string {
    if (!/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/.test(requestId)) throw notFound();
    return this.keys.verification(requestId);
  }
}

/** Request ids are UUIDs, which RFC 4122 reads in either case (Swift's uuidString is upper case): ours are lower case. */
function canonicalRequestId(id: string): string {
  return /^[0-9A-Fa-f-]{36}$/.test(id) ? id.toLowerCase() : id;
}

function created(
  requestId: string,
  phone: string,
  method: Method,
  codeLength: number,
  cost: number,
  currency: string,
  expiresAt: number,
): CreatedBody {
  return {
    request_id: requestId,
    phone_number: phone,
    method,
    status: 'sent',
    code_length: codeLength,
    cost: { amount: fromMicro(cost), currency },
    expires_at: isoSeconds(expiresAt),
  };
}

/** 409: `resend: true` for a live workflow request, which moves on to its next step by itself instead. */
function workflowResend(liveId: string): ApiError {
  return new ApiError(
    'verification_pending',
    `A verification of this number is still pending (${liveId}); it is a workflow and starts its next step by itself, so it cannot be resent`,
    { request_id: liveId },
  );
}

/** 409: one live verification per number (or per number and method: fraud.liveVerification) and account. */
function pending(liveId: string, liveMethod: Method, method: Method, workflow = false): ApiError {
  const how = workflow
    ? 'it is a workflow and starts its next step by itself: wait for it to finish'
    : liveMethod === method
      ? 'send "resend": true to send it again, or wait for it to finish'
      : // The docs' scripted fallback (flash call, then voice, as separate requests) lands here under per_number: say how
        // a fallback is done on this server.
        `it uses method ${liveMethod}; wait for it to finish, or fall back within one request with "workflow" ` +
        `(e.g. [{"method":"${liveMethod}","timeout_seconds":30},{"method":"${method}"}]); the operator can allow one live ` +
        `request per method instead (fraud.liveVerification: per_method)`;
  return new ApiError('verification_pending', `A verification of this number is still pending (${liveId}); ${how}`, {
    request_id: liveId,
  });
}

function notFound(): ApiError {
  return new ApiError('not_found');
}

function createError(code: string): ApiError {
  switch (code) {
    case 'account_pending':
    case 'account_suspended':
    case 'insufficient_balance':
      return new ApiError(code);
    case 'account_missing':
      return new ApiError('unauthorized');
    default:
      return new ApiError('internal_error');
  }
}

function parseMethod(value: unknown): Method {
  if (value === undefined) return 'flash_call';
  if (typeof value !== 'string' || !(METHODS as readonly string[]).includes(value)) {
    throw new ApiError('invalid_request', `method must be one of ${METHODS.join(', ')}`);
  }
  return value as Method;
}

function parseCodeLength(value: unknown, method: Method): number {
  if (value === undefined) return 4;
  if (typeof value !== 'number' || !Number.isInteger(value)) {
    throw new ApiError('invalid_request', 'code_length must be an integer');
  }
  if (method === 'flash_call' && value !== 4) {
    throw new ApiError('invalid_request', 'code_length is fixed at 4 for flash_call (the last 4 digits of the caller ID)');
  }
  if (value < 4 || value > 6) throw new ApiError('invalid_request', 'code_length must be between 4 and 6');
  return value;
}

function parseLocale(value: unknown, method: Method): string | undefined {
  if (value === undefined) return undefined;
  if (method === 'flash_call') throw new ApiError('invalid_request', 'locale applies to methods "voice" and "sms" only');
  if (method === 'sms') {
    // Any language tag: the SMS worker falls back to the country's language, then English, when no template has it.
    if (typeof value !== 'string' || !/^[a-z]{2,3}(-[A-Z]{2})?$/.test(value)) {
      throw new ApiError('invalid_request', 'locale must be a language tag such as "en", "fr" or "pt-BR"');
    }
    return value;
  }
  if (typeof value !== 'string' || !(VOICE_LOCALES as readonly string[]).includes(value)) {
    throw new ApiError('invalid_request', `locale must be one of ${VOICE_LOCALES.join(', ')}`);
  }
  return value;
}

function parseExpiry(value: unknown, def: number, max: number): number {
  if (value === undefined) return def;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 1 || value > max) {
    throw new ApiError('invalid_request', `expiry_seconds must be an integer from 1 to ${max}`);
  }
  return value;
}

/**
 * Decimal digits of any script (Unicode Nd: Arabic-Indic, Devanagari, full-width ...) as ASCII ones. Each script's
 * digits run from 0 to 9 in consecutive code points, some scripts' runs back to back (the mathematical digits): a
 * digit's value is its distance from the start of its run, modulo 10.
 */
export function asciiDigits(text: string): string {
  return text.replace(/\p{Nd}/gu, (d) => {
    const cp = d.codePointAt(0)!;
    if (cp <= 0x39) return d;
    let start = cp;
    while (start > 0 && /\p{Nd}/u.test(String.fromCodePoint(start - 1))) start--;
    return String((cp - start) % 10);
  });
}
