import { MAX_RATE_LIMIT } from '../accounts/account-store.js';
import type { Config } from '../config/schema.js';
import { ERROR_CATALOGUE } from '../verification/errors.js';
import { METHODS, STATUSES } from '../verification/types.js';

type Json = Record<string, unknown>;

const ref = (name: string): Json => ({ $ref: `#/components/schemas/${name}` });
const json = (schema: Json): Json => ({ 'application/json': { schema } });
const isoTime = { type: 'string', format: 'date-time', description: 'ISO 8601, UTC, no milliseconds', examples: ['2026-03-04T15:05:00Z'] };
const money = {
  type: 'object',
  required: ['amount', 'currency'],
  properties: { amount: { type: 'number' }, currency: { type: 'string', enum: ['GBP', 'USD', 'EUR'] } },
};


/**
 * The OpenAPI 3.1 description of the FlashVerify v1 API as this server
 * implements it, served at GET /v1/openapi.json. Limits come from the running
 * configuration so the document never disagrees with the server.
 */
export function openApiDocument(config: Readonly<Config>): Json {
  const rl = {
    'X-RateLimit-Limit': { $ref: '#/components/headers/X-RateLimit-Limit' },
    'X-RateLimit-Remaining': { $ref: '#/components/headers/X-RateLimit-Remaining' },
    'X-RateLimit-Reset': { $ref: '#/components/headers/X-RateLimit-Reset' },
  };
  const withRl = (description: string, schema: Json, extraHeaders: Json = {}): Json => ({
    description,
    headers: { ...rl, ...extraHeaders },
    content: json(schema),
  });
  const err = (description: string, ...codes: string[]): Json => ({
    description: `${description} (${codes.join(', ')})`,
    headers: rl,
    content: json(ref('Error')),
  });
  const common = {
    '401': err('Missing or wrong credentials', 'unauthorized'),
    '429': {
      ...err('Rate limit exceeded', 'rate_limited'),
      headers: { ...rl, 'Retry-After': { description: 'Seconds to wait', schema: { type: 'integer' } } },
    },
    '500': err('Server error', 'internal_error'),
    '503': {
      ...err('Temporarily unavailable: Redis unreachable or refusing writes (full, a replica), or this server at its limit of requests in progress (api.maxInFlight)', 'service_unavailable'),
      headers: { ...rl, 'Retry-After': { description: 'Seconds to wait (when the server is at its limit)', schema: { type: 'integer' } } },
    },
  };

  // Admin routes: bearer token, no rate limit, 404 for every route while admin.token is empty.
  const adminErr = (description: string, ...codes: string[]): Json => ({
    description: `${description} (${codes.join(', ')})`,
    content: json(ref('Error')),
  });
  const accountId = { name: 'account_id', in: 'path', required: true, schema: { type: 'string', format: 'uuid' } };
  const adminOp = (operationId: string, summary: string, ok: Json, body?: Json, extra: Json = {}): Json => ({
    operationId,
    summary,
    tags: ['admin'],
    security: [{ adminBearer: [] }],
    ...(body ? { requestBody: { required: true, content: json(body) } } : {}),
    responses: {
      ...ok,
      ...(body ? { '400': adminErr('Invalid body', 'invalid_request') } : {}),
      '401': adminErr('Missing or wrong admin token', 'unauthorized'),
      '404': adminErr('Unknown account, or the admin API is off (admin.token empty)', 'not_found'),
      ...extra,
    },
  });
  const trunkName = { name: 'trunk', in: 'path', required: true, schema: { type: 'string' }, description: 'sip.trunks[].name' };
  const accountOk = (description: string): Json => ({ '200': { description, content: json(ref('Account')) } });
  const adminAccountOp = (operationId: string, summary: string, ok: Json, body?: Json): Json => ({
    ...adminOp(operationId, summary, ok, body),
    parameters: [accountId],
  });

  const payload = {
    type: 'object',
    required: ['event', 'request_id', 'phone_number', 'method', 'status', 'timestamp'],
    properties: {
      event: { type: 'string', enum: STATUSES.map((s) => `verification.${s}`) },
      request_id: { type: 'string', format: 'uuid' },
      phone_number: { type: 'string' },
      method: { type: 'string', enum: [...METHODS] },
      status: { type: 'string', enum: [...STATUSES] },
      timestamp: isoTime,
    },
  };

  return {
    openapi: '3.1.0',
    info: {
      title: 'FlashVerify API',
      version: '1.0.0',
      description:
        'Phone-number verification by flash call, voice OTP and SMS OTP. All /v1 endpoints except this document need HTTP Basic ' +
        `authentication (API key : API secret). Rate limit: ${config.api.defaultRateLimitPerSecond} requests per second per API key by default.`,
    },
    servers: [{ url: '/' }],
    security: [{ basicAuth: [] }],
    paths: {
      '/v1/verify': {
        post: {
          operationId: 'createVerification',
          summary: 'Start a verification (flash call, voice OTP or SMS OTP)',
          parameters: [
            {
              name: 'Idempotency-Key',
              in: 'header',
              required: false,
              description: `1-255 printable ASCII characters. A repeat with the same key (same account, same body) within ${config.api.idempotencyTtlSeconds} s gets the first response again, with Idempotent-Replayed: true, and is not charged again.`,
              schema: { type: 'string', minLength: 1, maxLength: 255, pattern: '^[\\x20-\\x7E]+$' },
            },
          ],
          requestBody: { required: true, content: json(ref('CreateRequest')) },
          responses: {
            '201': withRl('Verification created; the code is never returned', ref('CreatedResponse'), {
              'Idempotent-Replayed': { description: '"true" when this is a stored response replayed', schema: { type: 'string' } },
            }),
            '200': withRl(
              `resend: true and a verification of this number was live: sent again on the same request (at most ${config.fraud.maxSends} sends; a flash call gets a new code, voice and SMS repeat theirs)`,
              { allOf: [ref('CreatedResponse'), { type: 'object', required: ['sends'], properties: { sends: { type: 'integer', minimum: 2 } } }] },
            ),
            '400': err(
              'Invalid input; invalid_phone also when the number is refused by the fraud rules (country not allowed, premium-rate and other blocked types, non-mobile for flash_call), with the reason in message',
              'invalid_phone',
              'invalid_request',
            ),
            '402': err('Balance too low', 'insufficient_balance'),
            '403': err('Account not allowed to verify', 'account_pending', 'account_suspended'),
            '409': {
              description:
                'A verification of this number is still live for this account (verification_pending); request_id names it. Send resend: true to send it again.',
              headers: rl,
              content: json({
                type: 'object',
                required: ['error', 'message', 'request_id'],
                properties: { error: { const: 'verification_pending' }, message: { type: 'string' }, request_id: { type: 'string', format: 'uuid' } },
              }),
            },
            ...common,
            '429': {
              ...(common['429'] as Json),
              description:
                'Rate limit exceeded (rate_limited): the API key\'s requests per second, a velocity limit (message and limit name it: per-number, per-prefix, per-IP), or the sends of one request (max-sends)',
            },
          },
        },
      },
      '/v1/verify/check': {
        post: {
          operationId: 'checkVerification',
          summary: `Check the code the user entered (at most ${config.verification.maxCheckAttempts} attempts)`,
          requestBody: { required: true, content: json(ref('CheckRequest')) },
          responses: {
            '200': withRl('Verified (also when the request was verified before with this code: a retried check gets the same answer, nothing counted)', ref('CheckResponse')),
            '400': {
              description: 'Wrong code (invalid_code, with attempts_remaining), expired or finished, or another code for a verified request (verification_expired), bad input (invalid_request)',
              headers: rl,
              content: json({ oneOf: [ref('InvalidCodeError'), ref('Error')] }),
            },
            '404': err('Unknown request id', 'not_found'),
            ...common,
          },
        },
      },
      '/v1/verify/{request_id}': {
        get: {
          operationId: 'getVerification',
          summary: 'Status of a verification',
          parameters: [{ name: 'request_id', in: 'path', required: true, schema: { type: 'string', format: 'uuid' } }],
          responses: {
            '200': withRl('The verification', ref('StatusResponse')),
            '404': err('Unknown request id, or another account\'s', 'not_found'),
            ...common,
          },
        },
      },
      '/v1/verify/{request_id}/cancel': {
        post: {
          operationId: 'cancelVerification',
          summary:
            'Cancel a live verification and its pending workflow steps: status canceled (webhook verification.canceled). A step not dialled yet is refunded and taken out of usage; a voice call in progress is CANCELled, or hung up before the code is read; a flash call ringing is CANCELled (its caller ID was shown, so it is billed).',
          parameters: [{ name: 'request_id', in: 'path', required: true, schema: { type: 'string', format: 'uuid' } }],
          responses: {
            '200': withRl('The verification, canceled', ref('StatusResponse')),
            '400': err('Already verified, expired, failed or canceled', 'verification_expired'),
            '404': err('Unknown request id, or another account\'s', 'not_found'),
            ...common,
          },
        },
      },
      '/v1/balance': {
        get: {
          operationId: 'getBalance',
          summary: 'Prepaid balance',
          responses: { '200': withRl('Balance', ref('BalanceResponse')), ...common },
        },
      },
      '/v1/usage': {
        get: {
          operationId: 'getUsage',
          summary: 'Usage summary by method for a date range (UTC days; usage is kept 400 days)',
          parameters: [
            { name: 'from', in: 'query', required: false, description: 'Default: 30 days ago (30 days before `to` when `to` is earlier than that)', schema: { type: 'string', format: 'date' } },
            { name: 'to', in: 'query', required: false, description: 'Default: today', schema: { type: 'string', format: 'date' } },
          ],
          responses: {
            '200': withRl('Usage', ref('UsageResponse')),
            '400': err('Bad dates', 'invalid_request'),
            ...common,
          },
        },
      },
      '/v1/openapi.json': {
        get: {
          operationId: 'getOpenApi',
          summary: 'This document',
          security: [],
          responses: { '200': { description: 'OpenAPI 3.1 document', content: json({ type: 'object' }) } },
        },
      },
      '/admin/v1/accounts': {
        post: adminOp(
          'adminCreateAccount',
          'Create an account; the API secret is returned this once',
          { '201': { description: 'Created', content: json(ref('CreatedAccount')) } },
          ref('AdminCreateAccount'),
        ),
      },
      '/admin/v1/accounts/{account_id}': {
        get: adminAccountOp('adminGetAccount', 'An account (never its secret)', accountOk('The account')),
      },
      '/admin/v1/accounts/{account_id}/approve': {
        post: adminAccountOp('adminApproveAccount', 'pending → active (no body)', accountOk('The account')),
      },
      '/admin/v1/accounts/{account_id}/suspend': {
        post: adminAccountOp('adminSuspendAccount', 'Suspend: the account may read but not start verifications (no body)', accountOk('The account')),
      },
      '/admin/v1/accounts/{account_id}/topup': {
        post: adminAccountOp('adminTopUpAccount', 'Add to the balance, in the account\'s currency', accountOk('The account'), {
          type: 'object',
          required: ['amount'],
          additionalProperties: false,
          properties: { amount: { type: 'number', exclusiveMinimum: 0 } },
        }),
      },
      '/admin/v1/accounts/{account_id}/regenerate-secret': {
        post: adminAccountOp('adminRegenerateSecret', 'New API secret, same key; the old secret stops working (no body)', {
          '200': { description: 'The account with its new secret, shown this once', content: json(ref('CreatedAccount')) },
        }),
      },
      '/admin/v1/accounts/{account_id}/webhook': {
        put: adminAccountOp('adminSetWebhook', 'Set (or, with null, clear) the webhook URL', accountOk('The account'), {
          type: 'object',
          required: ['url'],
          additionalProperties: false,
          properties: { url: { oneOf: [{ type: 'string', format: 'uri' }, { type: 'null' }] } },
        }),
      },
      '/admin/v1/accounts/{account_id}/rate-limit': {
        put: adminAccountOp(
          'adminSetRateLimit',
          `Requests per second for the account's API key (null: back to the default, ${config.api.defaultRateLimitPerSecond})`,
          accountOk('The account'),
          {
            type: 'object',
            required: ['requests_per_second'],
            additionalProperties: false,
            properties: { requests_per_second: { oneOf: [{ type: 'integer', minimum: 1, maximum: MAX_RATE_LIMIT }, { type: 'null' }] } },
          },
        ),
      },
      '/admin/v1/accounts/{account_id}/fraud': {
        get: adminAccountOp('adminGetFraud', 'The account\'s fraud overrides and the rules in force (server defaults + overrides)', {
          '200': { description: 'Overrides and effective rules', content: json(ref('FraudSettings')) },
        }),
        put: adminAccountOp(
          'adminSetFraud',
          'Replace the account\'s fraud overrides ({} clears them). Keys as in the fraud config section: velocity.perNumber|perPrefix|perIp {limit, windowSeconds}, countries {allow, deny} (narrow the server lists, which always apply), lineTypes {flashCall, blocked, allowUnknown}, liveVerification, maxSends, testNumbers [{number, code}] (added to the server\'s)',
          { '200': { description: 'Overrides and effective rules', content: json(ref('FraudSettings')) } },
          { type: 'object', additionalProperties: true },
        ),
      },
      '/admin/v1/accounts/{account_id}/sms-templates/{locale}': {
        put: {
          ...adminAccountOp(
            'adminSetSmsTemplate',
            'The account\'s SMS text for a locale; "{code}" is replaced by the code; null removes it. Refused (400) when a 6-digit code would not fit one SMS part (160 GSM-7 characters, or 70 UCS-2)',
            accountOk('The account'),
            {
              type: 'object',
              required: ['template'],
              additionalProperties: false,
              properties: { template: { oneOf: [{ type: 'string', minLength: 1, maxLength: 1000 }, { type: 'null' }] } },
            },
          ),
          parameters: [accountId, { name: 'locale', in: 'path', required: true, schema: { type: 'string', pattern: '^[a-z]{2,3}(-[A-Z]{2})?$' } }],
        },
      },
      '/admin/v1/trunks': {
        get: adminOp('adminListTrunks', 'Every SIP trunk (sip.trunks) and whether an operator took it out of service', {
          '200': { description: 'The trunks', content: json({ type: 'object', required: ['trunks'], properties: { trunks: { type: 'array', items: ref('TrunkState') } } }) },
        }),
      },
      '/admin/v1/trunks/{trunk}/disable': {
        post: {
          ...adminOp(
            'adminDisableTrunk',
            'Take a trunk out of service: every worker gives it no new call within a second (calls on it go on); a number only disabled trunks route fails no_route. The body (a reason) may be left out',
            { '200': { description: 'The trunk\'s state', content: json(ref('TrunkState')) } },
            undefined,
            { '400': adminErr('Invalid body', 'invalid_request') },
          ),
          requestBody: { required: false, content: json({ type: 'object', additionalProperties: false, properties: { reason: { type: 'string', maxLength: 200 } } }) },
          parameters: [trunkName],
        },
      },
      '/admin/v1/trunks/{trunk}/enable': {
        post: {
          ...adminOp('adminEnableTrunk', 'Put a trunk back in service', { '200': { description: 'The trunk\'s state', content: json(ref('TrunkState')) } }),
          parameters: [trunkName],
        },
      },
      '/healthz': {
        get: {
          operationId: 'health',
          summary: 'Liveness: the process is up',
          security: [],
          responses: { '200': { description: 'Up', content: json({ type: 'object', properties: { status: { const: 'ok' } } }) } },
        },
      },
      '/readyz': {
        get: {
          operationId: 'ready',
          summary: 'Readiness: Redis (and other dependencies) reachable',
          security: [],
          responses: {
            '200': { description: 'Ready', content: json(ref('Readiness')) },
            '503': { description: 'Not ready', content: json(ref('Readiness')) },
          },
        },
      },
    },
    webhooks: {
      verificationEvent: {
        post: {
          summary: 'Status update for a verification, POSTed to the account\'s webhook URL',
          description:
            'Signed: X-FlashVerify-Signature = "sha256=" + hex HMAC-SHA256 of the raw body keyed with the API secret. ' +
            `Answer 2xx within ${config.webhooks.timeoutMs / 1000} s; anything else (including a redirect) is retried with exponential back-off. ` +
            'Events of one verification arrive in order.',
          parameters: [
            { name: 'X-FlashVerify-Signature', in: 'header', required: true, schema: { type: 'string', pattern: '^sha256=[0-9a-f]{64}$' } },
            { name: 'X-FlashVerify-Timestamp', in: 'header', required: true, description: 'Unix seconds when this attempt was sent', schema: { type: 'string' } },
            { name: 'X-FlashVerify-Event-Id', in: 'header', required: true, description: 'Same for every retry of one event', schema: { type: 'string' } },
          ],
          requestBody: { required: true, content: json(ref('WebhookPayload')) },
          responses: { '2XX': { description: 'Received' } },
        },
      },
    },
    components: {
      securitySchemes: {
        basicAuth: { type: 'http', scheme: 'basic', description: 'Username: API key (32 hex). Password: API secret (64 hex).' },
        adminBearer: { type: 'http', scheme: 'bearer', description: 'The admin.token of the server (FLASHVERIFY_ADMIN_TOKEN); /admin/v1 only.' },
      },
      headers: {
        'X-RateLimit-Limit': { description: 'Requests allowed per second for this API key', schema: { type: 'integer' } },
        'X-RateLimit-Remaining': { description: 'Requests left in the current second', schema: { type: 'integer' } },
        'X-RateLimit-Reset': { description: 'Unix time (seconds) when the window resets', schema: { type: 'integer' } },
      },
      schemas: {
        Error: {
          type: 'object',
          required: ['error', 'message'],
          properties: {
            error: { type: 'string', enum: Object.keys(ERROR_CATALOGUE) },
            message: { type: 'string' },
          },
        },
        InvalidCodeError: {
          type: 'object',
          required: ['error', 'message', 'attempts_remaining'],
          properties: {
            error: { const: 'invalid_code' },
            message: { type: 'string' },
            attempts_remaining: { type: 'integer', minimum: 0 },
          },
        },
        FraudSettings: {
          type: 'object',
          required: ['account_id', 'overrides', 'effective'],
          properties: {
            account_id: { type: 'string', format: 'uuid' },
            overrides: { oneOf: [{ type: 'object' }, { type: 'null' }] },
            effective: { type: 'object' },
          },
        },
        CreateRequest: {
          type: 'object',
          required: ['phone_number'],
          additionalProperties: false,
          properties: {
            phone_number: { type: 'string', pattern: '^\\+[1-9]\\d{6,14}$', description: 'E.164', examples: ['+447700900000'] },
            method: {
              type: 'string',
              enum: [...METHODS, 'auto'],
              default: 'flash_call',
              description: `"auto": the server's default workflow (${config.verification.defaultWorkflow.map((s) => s.method).join(' → ')}). Exclusive with workflow.`,
            },
            workflow: ref('Workflow'),
            code_length: { type: 'integer', minimum: 4, maximum: 6, default: 4, description: 'Fixed at 4 for flash_call (and flash_call workflow steps)' },
            expiry_seconds: {
              type: 'integer',
              minimum: 1,
              maximum: config.verification.maxExpirySeconds,
              default: config.verification.defaultExpirySeconds,
            },
            client_ip: {
              type: 'string',
              description: 'The end user\'s IPv4 or IPv6 address, for the per-IP velocity limit',
              examples: ['203.0.113.7'],
            },
            resend: {
              type: 'boolean',
              default: false,
              description: 'When a verification of this number is live: send it again on the same request (200) instead of 409; not for a live workflow request (409), which starts its next step by itself',
            },
            locale: {
              type: 'string',
              pattern: '^[a-z]{2,3}(-[A-Z]{2})?$',
              description:
                'voice and sms: language of the spoken prompt (en, fr, es, de) or of the SMS template (the account\'s, else the configured one); default from the destination country',
            },
          },
        },
        CreatedResponse: {
          type: 'object',
          required: ['request_id', 'phone_number', 'method', 'status', 'code_length', 'cost', 'expires_at'],
          properties: {
            request_id: { type: 'string', format: 'uuid' },
            phone_number: { type: 'string' },
            method: { type: 'string', enum: [...METHODS] },
            status: { const: 'sent' },
            code_length: { type: 'integer' },
            cost: money,
            expires_at: isoTime,
            workflow: ref('Workflow'),
          },
        },
        Workflow: {
          type: 'array',
          minItems: 1,
          maxItems: 5,
          description:
            'Fallback steps tried in order under one request_id: each starts when the previous one failed or its timeout_seconds passed without verified. Each step has its own code (only the current step\'s is accepted) and its own cost, charged when it starts. Two consecutive steps may not use the same method. Every step is screened up front: a flash_call step to a number that is not a mobile is 400 invalid_phone naming the step (workflow[n]); with "method": "auto" the default workflow\'s flash_call steps are left out instead (the response echoes the steps that will run; 400 invalid_phone when none is left). Exclusive with method.',
          items: {
            type: 'object',
            required: ['method'],
            additionalProperties: false,
            properties: {
              method: { type: 'string', enum: [...METHODS] },
              timeout_seconds: {
                type: 'integer',
                minimum: config.verification.minStepTimeoutSeconds,
                description: 'Required on every step but the last; at most expiry_seconds',
              },
            },
          },
          examples: [[{ method: 'flash_call', timeout_seconds: 30 }, { method: 'voice', timeout_seconds: 45 }, { method: 'sms' }]],
        },
        CheckRequest: {
          type: 'object',
          required: ['request_id', 'code'],
          additionalProperties: false,
          properties: { request_id: { type: 'string', format: 'uuid' }, code: { type: 'string' } },
        },
        CheckResponse: {
          type: 'object',
          required: ['request_id', 'status', 'phone_number'],
          properties: { request_id: { type: 'string', format: 'uuid' }, status: { const: 'verified' }, phone_number: { type: 'string' } },
        },
        StatusResponse: {
          type: 'object',
          required: ['request_id', 'phone_number', 'method', 'status', 'cost', 'created_at', 'verified_at', 'expires_at', 'status_history'],
          properties: {
            request_id: { type: 'string', format: 'uuid' },
            phone_number: { type: 'string' },
            method: { type: 'string', enum: [...METHODS] },
            status: { type: 'string', enum: [...STATUSES] },
            cost: money,
            created_at: isoTime,
            verified_at: { oneOf: [isoTime, { type: 'null' }] },
            expires_at: isoTime,
            status_history: {
              type: 'array',
              items: {
                type: 'object',
                required: ['status', 'at'],
                properties: { status: { type: 'string', enum: [...STATUSES] }, at: isoTime },
              },
            },
            failure_reason: { type: 'string', description: 'When status is failed: busy, no_ringing, unreachable ...' },
            workflow: ref('Workflow'),
            attempts: {
              type: 'array',
              description: 'Workflow requests: one entry per step started, oldest first',
              items: {
                type: 'object',
                required: ['method', 'status', 'cost', 'started_at', 'ended_at'],
                properties: {
                  method: { type: 'string', enum: [...METHODS] },
                  status: { type: 'string', enum: ['sent', 'delivered', 'verified', 'expired', 'failed', 'timed_out', 'canceled'] },
                  cost: money,
                  started_at: isoTime,
                  ended_at: { oneOf: [isoTime, { type: 'null' }] },
                  failure_reason: { type: 'string' },
                },
              },
            },
          },
        },
        BalanceResponse: { type: 'object', required: ['balance'], properties: { balance: money } },
        UsageResponse: {
          type: 'object',
          required: ['from', 'to', 'total_verifications', 'successful', 'success_rate', 'total_cost', 'by_method'],
          properties: {
            from: { type: 'string', format: 'date' },
            to: { type: 'string', format: 'date' },
            total_verifications: { type: 'integer' },
            successful: { type: 'integer' },
            success_rate: { type: 'number', description: 'Percent, one decimal' },
            total_cost: money,
            by_method: {
              type: 'object',
              properties: Object.fromEntries(
                METHODS.map((m) => [
                  m,
                  { type: 'object', required: ['count', 'cost'], properties: { count: { type: 'integer' }, cost: { type: 'number' } } },
                ]),
              ),
            },
          },
        },
        Readiness: {
          type: 'object',
          required: ['status', 'checks'],
          properties: {
            status: { type: 'string', enum: ['ready', 'not_ready'] },
            checks: { type: 'object', additionalProperties: { type: 'boolean' } },
          },
        },
        WebhookPayload: payload,
        TrunkState: {
          type: 'object',
          required: ['name', 'enabled'],
          properties: {
            name: { type: 'string' },
            enabled: { type: 'boolean', description: 'false: taken out of service by an operator (no new calls)' },
            disabled_at: { type: 'string', format: 'date-time' },
            reason: { type: 'string', maxLength: 200 },
            cps: { type: 'number' },
            max_calls: { type: 'integer' },
            calls_in_use: { type: 'integer', description: 'Channels held over every worker (maxCalls under sip.trunkLimits cluster)' },
          },
        },
        Account: {
          type: 'object',
          required: ['account_id', 'name', 'status', 'currency', 'balance', 'api_key', 'webhook_url', 'rate_limit', 'sms_templates', 'created_at'],
          properties: {
            account_id: { type: 'string', format: 'uuid' },
            name: { type: 'string' },
            status: { type: 'string', enum: ['pending', 'active', 'suspended'] },
            currency: { type: 'string', enum: ['GBP', 'USD', 'EUR'] },
            balance: { type: 'number' },
            api_key: { type: 'string', pattern: '^[0-9a-f]{32}$' },
            webhook_url: { oneOf: [{ type: 'string' }, { type: 'null' }] },
            rate_limit: { oneOf: [{ type: 'integer' }, { type: 'null' }], description: 'Requests per second; null means the server default' },
            sms_templates: { type: 'object', additionalProperties: { type: 'string' }, description: 'SMS texts of this account by locale' },
            created_at: { type: 'string', format: 'date-time' },
          },
        },
        CreatedAccount: {
          allOf: [
            ref('Account'),
            { type: 'object', required: ['api_secret'], properties: { api_secret: { type: 'string', pattern: '^[0-9a-f]{64}$' } } },
          ],
        },
        AdminCreateAccount: {
          type: 'object',
          required: ['name'],
          additionalProperties: false,
          properties: {
            name: { type: 'string', minLength: 1, maxLength: 200 },
            balance: { type: 'number', minimum: 0, default: 0 },
            currency: { type: 'string', enum: ['GBP', 'USD', 'EUR'], default: config.accounts.defaultCurrency },
            active: { type: 'boolean', default: false, description: 'Create already approved' },
          },
        },
      },
    },
  };
}
