import { accessSync, constants as fsConstants } from 'node:fs';
import { z } from 'zod';
import { getCountryCallingCode, isSupportedCountry, parsePhoneNumberFromString, type CountryCode } from 'libphonenumber-js';
import { SmsTextError, validateTemplate } from '../sms/text.js';
import { isIP } from 'node:net';
import { defaultTargetTimeoutMs } from '../sip/sip-locator.js';
import { TECH_PREFIX_RE } from '../sip/number-format.js';
import { trunkUriTransportOf } from '../sip/trunk-transport.js';
import { trunkProblem } from '../sip/uac.js';
import { KEY_FORM, keyBytes } from '../crypto/master-key.js';

/**
 * The whole configuration of flashverify. `config/default.yaml` holds every
 * default an operator can see; this schema is the single source of truth for
 * what is valid. Parsed once at boot, then deep-frozen.
 */

const e164Prefix = z
  .string()
  .regex(/^\+[1-9]\d{3,13}$/, 'must be E.164 digits with a leading + (e.g. "+44190873")');

/**
 * The destination "country" of numbers that have none (verification/phone.ts): the international calling codes of
 * satellite and international networks (+870 Inmarsat, +881 satellite, +882 / +883 international networks, +878,
 * +888, and +800 / +808 / +979), where international revenue-share fraud lives.
 */
export const NO_COUNTRY = 'ZZ';

export const countryCodeSchema = z
  .string()
  .regex(/^[A-Z]{2}$/, 'must be an ISO 3166-1 alpha-2 code such as "GB" (or "ZZ": numbers of no country)')
  // A code no number belongs to ("XX", "UK" for GB) would allow or deny nothing, without a word.
  .superRefine((c, ctx) => {
    if (/^[A-Z]{2}$/.test(c) && c !== NO_COUNTRY && !isSupportedCountry(c)) {
      ctx.addIssue({ code: 'custom', message: `"${c}" is not a country with telephone numbers (ISO 3166-1 alpha-2, e.g. "GB", not "UK"; "ZZ": numbers of no country)` });
    }
  });

const sipUri = z
  .string()
  .regex(/^sips?:[^\s]+$/i, 'must be a SIP URI such as "sip:trunk.example.net:5060;transport=udp"');

const OPTIONS_PING = 'must be 0 (no OPTIONS pings) or a whole number of milliseconds from 100 to 3600000';
/** Interval of OPTIONS keep-alive pings to a trunk (RFC 3261 11); 0 = none. */
const optionsPingMs = z.int({ message: OPTIONS_PING }).refine((ms) => ms === 0 || (ms >= 100 && ms <= 3_600_000), { message: OPTIONS_PING });

/** A DNS host name (no IP address: SNI carries names only, RFC 6066 3). */
const HOST_NAME = /^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;

/** The PEM files of `sip.tls` and of a trunk's `tls`; checked at boot (files readable, certificate and key as a pair). */
const tlsFiles = {
  /** PEM CA bundle the certificates must chain to (replaces Node's trust store). */
  caFile: z.string().min(1).optional(),
  /** PEM client certificate and key, for trunks that ask for one (mutual TLS): both or neither. */
  certFile: z.string().min(1).optional(),
  keyFile: z.string().min(1).optional(),
};

const HANDSHAKE_MS = 'must be a whole number of milliseconds from 100 to 60000';
const IDLE_MS = 'must be 0 (kept open) or a whole number of milliseconds';
/** The TLS timeouts of `sip.tls` (with their defaults) and of a trunk's `tls` (over them). */
const tlsTimeouts = {
  /** A TLS handshake not finished by then fails its calls `unreachable`. */
  handshakeTimeoutMs: z.int({ message: HANDSHAKE_MS }).min(100, { message: HANDSHAKE_MS }).max(60_000, { message: HANDSHAKE_MS }),
  /** A connection to a trunk idle this long, with no call on it, is closed; 0: kept open. */
  idleTimeoutMs: z.int({ message: IDLE_MS }).min(0, { message: IDLE_MS }),
};

/** What is wrong with the files of a TLS settings object, by key: unreadable, or a certificate without its key. */
function tlsFileProblems(t: { caFile?: string | undefined; certFile?: string | undefined; keyFile?: string | undefined }): { key: string; message: string }[] {
  const out: { key: string; message: string }[] = [];
  if ((t.certFile === undefined) !== (t.keyFile === undefined)) {
    out.push({ key: t.certFile === undefined ? 'certFile' : 'keyFile', message: 'certFile and keyFile go together (mutual TLS): give both or neither' });
  }
  for (const key of ['caFile', 'certFile', 'keyFile'] as const) {
    const file = t[key];
    if (file === undefined) continue;
    try {
      accessSync(file, fsConstants.R_OK);
    } catch (err) {
      out.push({ key, message: `cannot read ${file} (${(err as NodeJS.ErrnoException).code ?? String(err)})` });
    }
  }
  return out;
}

/**
 * A TLS trunk's own settings (embedded stack): each one given replaces `sip.tls`'s for this trunk's connections, which
 * are never shared with trunks of other settings; the ones left out are `sip.tls`'s. Checked in the `sip` refinement
 * below, which knows the trunk's name and URI.
 */
const trunkTlsSchema = z
  .object({
    ...tlsFiles,
    /**
     * `true`: verify this trunk against Node's trust store (the public roots), not sip.tls.caFile, which replaces that
     * store; for a carrier with a public certificate beside one whose private CA is sip.tls.caFile.
     */
    systemCa: z.boolean().optional(),
    /** Labs only: accept any certificate from this trunk (`false` verifies it when sip.tls.insecureSkipVerify is true). */
    insecureSkipVerify: z.boolean().optional(),
    /** The name sent as SNI and checked against the certificate, instead of the URI's host (or SRV domain). */
    serverName: z
      .string()
      .refine((name) => HOST_NAME.test(name) && isIP(name) === 0, { message: 'must be a DNS host name (SNI carries no IP address, RFC 6066 3)' })
      .optional(),
    /** This trunk's own, over sip.tls's: its connections are never shared with a trunk of other timeouts. */
    handshakeTimeoutMs: tlsTimeouts.handshakeTimeoutMs.optional(),
    idleTimeoutMs: tlsTimeouts.idleTimeoutMs.optional(),
  })
  .strict();

export const trunkSchema = z
  .object({
    name: z.string().min(1),
    /** Request-URI host part of every INVITE: sip:host[:port][;transport=udp|tcp] */
    uri: sipUri,
    /**
     * Outbound proxy (an SBC in front of the carrier; embedded backend): requests go to this URI's address (DNS as for
     * a trunk host, its transport), with `Route: <proxy;lr>`, while the Request-URI stays the trunk's (RFC 3261 8.1.2).
     */
    proxy: sipUri.optional(),
    /** Digest credentials for trunks that challenge with 401/407 (RFC 3261 22.2). */
    auth: z
      .object({
        // Written into the Authorization header (RFC 3261 22.4): a line break would end it there.
        username: z.string().min(1).regex(/^[^\r\n\0]*$/, 'must not contain CR, LF or NUL'),
        password: z.string().regex(/^[^\r\n\0]*$/, 'must not contain CR, LF or NUL'),
      })
      .optional(),
    /** Host placed in From/P-Asserted-Identity; defaults to the trunk host. */
    fromDomain: z.string().optional(),
    /** Calls per second this trunk accepts, across every worker process (sip.trunkLimits: cluster) or in each (process). */
    cps: z.number().int().positive().default(200),
    /**
     * Concurrent calls this trunk carries at most (a carrier's channel limit), across worker processes as `cps`
     * (sip.trunkLimits); calls beyond it go to another trunk with a free slot, or wait for one (engine/trunk-pacer.ts).
     * None: no cap.
     */
    maxCalls: z.number().int().positive().optional(),
    /**
     * Destination prefixes (E.164, with +) this trunk carries: a number goes to the trunks of the longest prefix it
     * starts with, else to the trunks without prefixes (the default route); priority and weight choose among those.
     * None or empty (the default): the default route.
     */
    prefixes: z.array(z.string().regex(/^\+\d{1,14}$/, 'must be an E.164 prefix such as "+44"')).optional(),
    /** Treat 183 Session Progress as "ringing" for flash calls (some carriers never send 180). */
    ringOn183: z.boolean().default(false),
    /**
     * This trunk's flash.ringMs and flash.ringingTimeoutMs, and voice.answerTimeoutMs, for its calls (a route whose
     * handsets need a longer ring to show the caller ID, or whose post-dial delay is longer). None: the global ones.
     */
    ringMs: z.number().int().nonnegative().max(60_000).optional(),
    ringingTimeoutMs: z.number().int().positive().max(120_000).optional(),
    answerTimeoutMs: z.number().int().positive().max(300_000).optional(),
    /** Send a minimal SDP offer in flash-call INVITEs for carriers that reject offer-less INVITEs. */
    dummySdp: z.boolean().default(false),
    /**
     * RFC 3262 reliable provisional responses (embedded backend): `off` says nothing of 100rel, `supported` sends
     * `Supported: 100rel`, `required` sends `Require: 100rel` (a far end without it answers 420). A reliable 18x is
     * PRACKed in every case. Default `off`.
     */
    rel100: z.enum(['off', 'supported', 'required']).optional(),
    /**
     * How the called number (Request-URI, To) and the calling number (From, P-Asserted-Identity: the CLI) are written
     * for this trunk (sip/number-format.ts): `e164` (default, `+447700900123;user=phone`), `e164_no_plus`
     * (`447700900123`) or `national` (`07700900123`).
     */
    calledNumberFormat: z.enum(['e164', 'e164_no_plus', 'national']).optional(),
    callingNumberFormat: z.enum(['e164', 'e164_no_plus', 'national']).optional(),
    /** A carrier's routing prefix put before the called number (`1234#`: `sip:1234%23447700900123@...`). */
    techPrefix: z.string().regex(TECH_PREFIX_RE, 'must be 1-16 of 0-9 A-Z a-z * # + . - (a carrier routing prefix such as "1234#")').optional(),
    /** Extra headers added to every INVITE to this trunk. */
    headers: z.record(z.string(), z.string()).default({}),
    /** Lower goes first (default 0): calls go to the live trunks of the lowest priority; higher ones are failover. */
    priority: z.number().int().min(0).optional(),
    /** Share of calls among live trunks of the same priority (default 1). */
    weight: z.number().int().positive().optional(),
    /** OPTIONS ping interval for this trunk, overriding sip.trunkHealth.optionsPingMs; 0 = no pings to it. */
    optionsPingMs: optionsPingMs.optional(),
    /** TLS trunks: its own CA bundle, client certificate, verification, server name or timeouts, over sip.tls. */
    tls: trunkTlsSchema.optional(),
  })
  .strict();

/**
 * Why a trunk's `tls` cannot be used, one sentence per problem naming the trunk, by key under `tls` ('' for the
 * object itself): on a trunk that is not TLS, on the drachtio backend (drachtio-server makes the TLS connections,
 * with its own settings for every destination), unreadable files, a certificate without its key, `systemCa` with a
 * `caFile` or with `insecureSkipVerify: true`.
 */
function trunkTlsProblems(trunk: { name: string; uri: string; tls?: z.infer<typeof trunkTlsSchema> | undefined }, backend: 'embedded' | 'drachtio'): { key: string; message: string }[] {
  if (trunk.tls === undefined) return [];
  const named = (message: string): string => `trunk "${trunk.name}": ${message}`;
  const transport = trunkUriTransportOf(trunk.uri);
  if (typeof transport !== 'object') return []; // the URI's own checks say what is wrong
  if (transport.transport !== 'tls') {
    return [{ key: '', message: named(`tls settings are for a TLS trunk (sips: or ;transport=tls), and ${trunk.uri} is ${transport.transport.toUpperCase()}`) }];
  }
  if (backend === 'drachtio') {
    return [{ key: '', message: named('per-trunk tls settings need sip.backend embedded: with drachtio, drachtio-server makes the TLS connections with its own settings, the same for every trunk; remove this trunk\'s tls and set them in drachtio-server') }];
  }
  const problems = tlsFileProblems(trunk.tls);
  // Both name what certificates are checked against: one of them would be ignored, so neither is guessed at.
  if (trunk.tls.systemCa === true && trunk.tls.caFile !== undefined) {
    problems.push({ key: 'systemCa', message: 'tls.systemCa: true (Node\'s trust store) and tls.caFile (this CA bundle only) contradict each other: keep one' });
  }
  if (trunk.tls.systemCa === true && trunk.tls.insecureSkipVerify === true) {
    problems.push({ key: 'systemCa', message: 'tls.systemCa: true verifies against Node\'s trust store, and tls.insecureSkipVerify: true verifies nothing: keep one' });
  }
  return problems.map((p) => ({ key: p.key, message: named(p.message) }));
}

/**
 * Why a trunk's URI names no transport a backend can use (`sips:` over UDP, an unknown transport), or undefined.
 * Checked at boot, not when its first call is placed. Both backends speak UDP, TCP and TLS (drachtio-server does
 * TLS itself), so a `sips:` / `;transport=tls` trunk never goes out in clear.
 */
export function trunkTransportProblem(trunk: { name: string; uri: string }): string | undefined {
  const t = trunkUriTransportOf(trunk.uri);
  return typeof t === 'string' ? `trunk "${trunk.name}" (${trunk.uri}): ${t}` : undefined; // undefined t: the URI's own check says so
}

export const rangeSchema = z
  .object({
    /** E.164 prefix; the CLI is prefix + 4-digit code, so a range holds 10,000 numbers. */
    prefix: e164Prefix,
    /** ISO 3166-1 alpha-2 country of the range. */
    country: z.string().regex(/^[A-Z]{2}$/, 'must be an ISO 3166-1 alpha-2 code such as "GB"'),
    /**
     * The SIP trunks (names) this range's caller IDs may be sent on: carriers that screen caller IDs pass only numbers
     * they allocated or were told of. None: any trunk.
     */
    trunks: z.array(z.string().min(1)).min(1, 'at least one trunk name; leave the key out for any trunk').optional(),
  })
  .strict()
  .superRefine((r, ctx) => {
    const problem = cliRangeProblem(r.prefix, r.country);
    if (problem) ctx.addIssue({ code: z.ZodIssueCode.custom, path: ['prefix'], message: problem });
  });

/**
 * Why a DID range's caller IDs (prefix + 4-digit code) would not be numbers of its country, or undefined when they
 * are: a caller ID of the wrong length is rewritten or refused by carriers, or shown to the user as garbage. Checked
 * on the lowest and highest CLI of the range against libphonenumber-js's possible lengths (not its allocation data,
 * which lags new ranges).
 */
export function cliRangeProblem(prefix: string, country: string): string | undefined {
  if (!/^\+[1-9]\d{3,13}$/.test(prefix) || !/^[A-Z]{2}$/.test(country)) return undefined; // the field checks say so
  if (!isSupportedCountry(country)) return `country ${country} is not a country libphonenumber-js knows`;
  const cc = getCountryCallingCode(country as CountryCode);
  if (!prefix.startsWith(`+${cc}`)) return `${prefix} is not a ${country} number: ${country} numbers start with +${cc}`;
  for (const cli of [`${prefix}0000`, `${prefix}9999`]) {
    const n = parsePhoneNumberFromString(cli);
    if (!n || !n.isPossible()) {
      const national = cli.length - 1 - cc.length;
      return `caller IDs of this range (${prefix}0000-${prefix}9999, prefix + 4-digit code) have ${national} digits after +${cc}, which is not a possible ${country} number length: use a prefix with 4 digits fewer than a full ${country} number (e.g. "+44190873" gives +441908730000-+441908739999)`;
    }
  }
  return undefined;
}

/** SMS sender address: alphanumeric (TON 5, NPI 0) or an international number (TON 1, NPI 1). */
export const smsSenderSchema = z
  .object({
    addr: z.string().min(1).max(20),
    ton: z.number().int().min(0).max(6).default(5),
    /** Default: 1 (E.164) for an international number (ton 1), else 0; many SMSCs refuse TON 1 with NPI 0. */
    npi: z.number().int().min(0).max(18).optional(),
  })
  .strict()
  .refine((s) => s.ton !== 5 || s.addr.length <= 11, { message: 'an alphanumeric sender (ton 5) has at most 11 characters' })
  .refine((s) => s.ton !== 1 || /^\+?[1-9]\d{5,14}$/.test(s.addr), { message: 'an international sender (ton 1) is an E.164 number: digits, optionally after "+"' })
  .transform((s) => ({ ...s, npi: s.npi ?? (s.ton === 1 ? 1 : 0) }));

/**
 * Why an SMSC URL cannot be used, or undefined: smpp[s]://[system_id[:password]@]host[:port], the port 1-65535 (default
 * 2775, 3550 for smpps), system_id at most 15 and password at most 8 characters (SMPP 3.4 5.2.1) unless given apart.
 */
function smppUrlProblem(text: string, apart: { systemId?: string | undefined; password?: string | undefined } = {}): string | undefined {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    return 'is not a URL smpp[s]://[system_id[:password]@]host[:port] (is the port a number from 1 to 65535?)';
  }
  if (url.hostname === '') return 'names no host: smpp[s]://[system_id[:password]@]host[:port]';
  if (url.port === '0') return 'port 0: give the SMSC\'s port (1-65535; none: 2775, or 3550 for smpps://)';
  const systemId = apart.systemId ?? decodedOrUndefined(url.username);
  const password = apart.password ?? decodedOrUndefined(url.password);
  if (systemId === undefined || password === undefined) return 'has a bad percent-encoding in its system_id or password (a literal % is %25)';
  if (systemId.length > 15) return 'system_id (the URL\'s user) is longer than SMPP\'s 15 characters';
  if (password.length > 8) return 'password (the URL\'s) is longer than SMPP\'s 8 characters';
  return undefined;
}

/** decodeURIComponent, or undefined for a bad percent-encoding ("%ZZ", or bytes that are not UTF-8). */
export function decodedOrUndefined(text: string): string | undefined {
  try {
    return decodeURIComponent(text);
  } catch {
    return undefined;
  }
}

const smppUrl = z.string().regex(/^smpps?:\/\/[^\s]+$/, 'must be an smpp:// URL');

export const smscSchema = z
  .object({
    name: z.string().regex(/^[A-Za-z0-9_.-]{1,32}$/, 'letters, digits, "_", "." and "-" only (used in Redis keys and metrics)'),
    /** smpp://[system_id[:password]@]host:port (smpps:// for TLS). */
    url: smppUrl,
    /** Overrides the user part of the URL. */
    systemId: z.string().max(15).optional(),
    password: z.string().max(8).optional(),
    systemType: z.string().max(12).default(''),
    /** One bind_transceiver per bind, or a transmitter + a receiver. */
    bindMode: z.enum(['transceiver', 'transmitter_receiver']).default('transceiver'),
    /** Binds (connections) opened to this SMSC by each worker process; submits are spread over them. */
    binds: z.number().int().positive().max(64).default(1),
    /**
     * Binds to this SMSC over every worker process (the SMSC account's limit), counted in Redis under a lease: each
     * worker opens at most `binds` of them, the first workers to start taking theirs; one whose binds were refused asks
     * again every 5 s. None: each worker opens `binds`.
     */
    maxBinds: z.number().int().positive().max(1024).optional(),
    /** submit_sm in flight per bind, awaiting submit_sm_resp. */
    window: z.number().int().positive().max(1000).default(10),
    /** submit_sm per second per bind (token bucket). */
    tps: z.number().positive().default(50),
    /**
     * submit_sm per second over every bind of every worker process (the SMSC account's throughput), counted in Redis
     * (engine/cluster-limits.ts). None: only each bind's `tps`.
     */
    accountTps: z.number().positive().optional(),
    /** A PDU without a response after this is given up; a submit_sm is then `unconfirmed` (never resent), and its bind is recycled if still silent after as long again. */
    responseTimeoutMs: z.number().int().positive().default(30_000),
    enquireLinkMs: z.number().int().positive().default(30_000),
    /** Reconnect back-off (jittered, doubling from min to max). */
    reconnectMinMs: z.number().int().positive().default(1_000),
    reconnectMaxMs: z.number().int().positive().default(30_000),
    /** How this SMSC writes message ids in submit_sm_resp and in receipts: ids are normalised to one form. */
    messageIdFormat: z.enum(['auto', 'string', 'hex', 'decimal', 'hex_resp_decimal_dlr']).default('auto'),
    /** data_coding for GSM-7 text: 0 (SMSC default alphabet, unpacked septets) or 1 (IA5/ASCII) per SMSC; UCS-2 always uses 8. */
    gsm7DataCoding: z.union([z.literal(0), z.literal(1)]).default(0),
    /** Pack GSM-7 septets (8-bit packing) for SMSCs that want packed text. */
    gsm7Packed: z.boolean().default(false),
    /** Destination prefixes (E.164, with +) routed to this SMSC; empty = default route. */
    prefixes: z.array(z.string().regex(/^\+\d{1,14}$/, 'must be an E.164 prefix such as "+44"')).default([]),
    /**
     * smpps:// only: the CA bundle the SMSC's certificate must chain to (replaces Node's trust store: an SMSC with a
     * private CA), a client certificate and key (mutual TLS), the name checked and sent as SNI instead of the URL's
     * host, or (labs only) no verification.
     */
    tls: z
      .object({
        ...tlsFiles,
        insecureSkipVerify: z.boolean().default(false),
        serverName: z
          .string()
          .refine((name) => HOST_NAME.test(name) && isIP(name) === 0, { message: 'must be a DNS host name (SNI carries no IP address, RFC 6066 3)' })
          .optional(),
      })
      .strict()
      .optional(),
  })
  .strict()
  .refine((s) => s.reconnectMaxMs >= s.reconnectMinMs, { message: 'reconnectMaxMs must be >= reconnectMinMs' })
  .superRefine((s, ctx) => {
    const urlProblem = smppUrlProblem(s.url, s);
    if (urlProblem) ctx.addIssue({ code: 'custom', path: ['url'], message: `SMSC "${s.name}": the URL ${urlProblem}` });
    if (s.tls === undefined) return;
    if (!s.url.startsWith('smpps://')) {
      ctx.addIssue({ code: 'custom', path: ['tls'], message: `tls settings are for an smpps:// SMSC, and ${s.url.replace(/\/\/[^@/]*@/, '//')} is smpp://` });
      return;
    }
    for (const p of tlsFileProblems(s.tls)) ctx.addIssue({ code: 'custom', path: ['tls', ...(p.key ? [p.key] : [])], message: p.message });
  });

export const smsSchema = z
  .object({
    /** Run the SMS worker (SMPP binds) in worker processes; false when there is no SMSC (SMS jobs then wait for a worker that has one). */
    enabled: z.boolean().default(true),
    /** Shorthand for one SMSC named "default" (env SMPP_URL); ignored when `smscs` is set. */
    url: smppUrl
      .superRefine((u, ctx) => {
        const problem = smppUrlProblem(u);
        if (problem) ctx.addIssue({ code: 'custom', message: `the URL ${problem}` });
      })
      .default('smpp://flashverify:secret@127.0.0.1:2775'),
    smscs: z.array(smscSchema).default([]),
    /** Sender per destination country (ISO alpha-2), else `default`. */
    senders: z
      .object({
        default: smsSenderSchema.default({ addr: 'FlashVerify', ton: 5, npi: 0 }),
        byCountry: z.record(countryCodeSchema, smsSenderSchema).default({}),
      })
      .strict()
      .prefault({}),
    /** Message text per language; `{code}` is replaced by the code. Accounts can override per locale. */
    templates: z
      .record(z.string(), z.string().includes('{code}', { message: 'must contain {code}' }))
      .default({ en: 'Your FlashVerify code is: {code}' })
      .superRefine((templates, ctx) => {
        // Checked at boot, not at the first send: each must fit one part (GSM-7 or UCS-2) with a 6-digit code.
        for (const [language, text] of Object.entries(templates)) {
          try {
            validateTemplate(text);
          } catch (err) {
            if (!(err instanceof SmsTextError)) throw err;
            ctx.addIssue({ code: 'custom', path: [language], message: `template "${language}" cannot be sent: ${err.message}` });
          }
        }
      }),
    /** Retry of a submit the SMSC refused for now (throttled, queue full, no bind up), through BullMQ delays. */
    retry: z
      .object({
        firstDelayMs: z.number().int().positive().default(1_000),
        maxDelayMs: z.number().int().positive().default(60_000),
        /** Submit attempts before the verification fails. */
        maxAttempts: z.number().int().positive().default(8),
      })
      .strict()
      .refine((r) => r.firstDelayMs <= r.maxDelayMs, { path: ['firstDelayMs'], message: 'must not be over maxDelayMs (the delay starts here and doubles up to it)' })
      .prefault({}),
    /** How long message id → request mappings (and early receipts) are kept in Redis. */
    receiptTtlSeconds: z.number().int().positive().default(72 * 3600),
    /** Ask the SMSC for a delivery receipt (registered_delivery 1). */
    requestReceipts: z.boolean().default(true),
    /**
     * submit_sm carries validity_period (relative) = the code's remaining life: the SMSC gives up on a message it
     * could not deliver before the code expired, instead of delivering a dead code hours later (its own default
     * validity is often 24-72 h). false: left to the SMSC's default.
     */
    validityFromExpiry: z.boolean().default(true),
    /**
     * A submit_sm that left without a submit_sm_resp (timeout, connection lost)
     * is never sent again: a late response or a receipt (matched by number)
     * resolves it, else it fails `smsc_unconfirmed` (not refunded) this long
     * after the submit.
     */
    unconfirmedDeadlineMs: z.number().int().positive().default(300_000),
    /** No bind up: the job waits (BullMQ delay, not counted in retry.maxAttempts) at most this long in all, then fails `smsc_no_bind` (refunded). */
    noBindMaxWaitMs: z.number().int().positive().default(600_000),
  })
  .strict();

/** libphonenumber-js number types (`getType()` with the max metadata). */
export const LINE_TYPES = [
  'MOBILE',
  'FIXED_LINE',
  'FIXED_LINE_OR_MOBILE',
  'PREMIUM_RATE',
  'TOLL_FREE',
  'SHARED_COST',
  'VOIP',
  'PERSONAL_NUMBER',
  'PAGER',
  'UAN',
  'VOICEMAIL',
] as const;
export const lineTypeSchema = z.enum(LINE_TYPES);

/** A sliding window: at most `limit` sends in any `windowSeconds`; limit 0 turns it off. */
export const velocityWindowSchema = z
  .object({
    limit: z.number().int().nonnegative(),
    windowSeconds: z.number().int().positive(),
  })
  .strict();

/** A number that never reaches the network and accepts a fixed code (customers' automated tests). */
export const testNumberSchema = z
  .object({
    number: z.string().regex(/^\+[1-9]\d{6,14}$/, 'must be an E.164 number'),
    code: z.string().regex(/^\d{4,6}$/, 'must be 4 to 6 digits'),
  })
  .strict();

/**
 * One live verification per (account, number) — `per_number`, the default (issue 6) — or per (account, number,
 * method): `per_method` lets a customer script the docs' fallback (flash, then voice) as separate requests.
 */
export const LIVE_SCOPES = ['per_number', 'per_method', 'off'] as const;

export const fraudSchema = z
  .object({
    /** Sends per account in sliding windows (Redis sorted sets); resends count as sends. */
    velocity: z
      .object({
        perNumber: velocityWindowSchema.default({ limit: 5, windowSeconds: 900 }),
        /** The number minus its last 4 digits. */
        perPrefix: velocityWindowSchema.default({ limit: 100, windowSeconds: 3600 }),
        /** Only when the request carries `client_ip`. */
        perIp: velocityWindowSchema.default({ limit: 20, windowSeconds: 3600 }),
      })
      .strict()
      .prefault({}),
    /** Destination countries; empty allow = every country not denied. ZZ (no country: satellite, international networks) denied unless allowed. */
    countries: z
      .object({
        allow: z.array(countryCodeSchema).default([]),
        deny: z.array(countryCodeSchema).default([NO_COUNTRY]),
      })
      .strict()
      .prefault({}),
    lineTypes: z
      .object({
        /** Types a flash call may go to (a missed call means nothing on a landline). */
        flashCall: z.array(lineTypeSchema).default(['MOBILE', 'FIXED_LINE_OR_MOBILE']),
        /** Types refused for every method. */
        blocked: z
          .array(lineTypeSchema)
          .default(['PREMIUM_RATE', 'SHARED_COST', 'TOLL_FREE', 'UAN', 'VOICEMAIL', 'PAGER', 'PERSONAL_NUMBER']),
        /** Numbers the metadata cannot type (newer allocations, Ofcom drama ranges): accepted for every method. */
        allowUnknown: z.boolean().default(true),
      })
      .strict()
      .prefault({}),
    liveVerification: z.enum(LIVE_SCOPES).default('per_number'),
    /** Sends per request: the first one plus resends (`resend: true`). */
    maxSends: z.number().int().min(1).max(20).default(5),
    testNumbers: z.array(testNumberSchema).default([]),
    /** Automatic quarantine of DID ranges whose flash calls are rejected or never verified. */
    rangeHealth: z
      .object({
        enabled: z.boolean().default(true),
        /** Attempts (reject ratio) or sends (conversion) in the window before a range is judged. */
        minSample: z.number().int().positive().default(50),
        /** Final 403/603 over attempts above this: quarantined. */
        maxRejectRatio: z.number().min(0).max(1).default(0.5),
        /** Verified over sent below this: quarantined. 0 turns the conversion rule off. */
        minConversionRatio: z.number().min(0).max(1).default(0.05),
        windowSeconds: z.number().int().positive().default(3600),
        /** Sends younger than this are not judged for conversion yet (users are still typing). */
        conversionGraceSeconds: z.number().int().nonnegative().default(120),
        quarantineSeconds: z.number().int().positive().default(1800),
        /** A range is judged (its window read from Redis) at most this often per process; outcomes are only counted in between. */
        judgeIntervalMs: z.number().int().nonnegative().default(1000),
      })
      .strict()
      .prefault({}),
  })
  .strict();

/** Per destination country (ISO alpha-2 with telephone numbers) or "default": "UK" would never match a GB number. */
const priceTable = z.record(z.union([z.literal('default'), countryCodeSchema], { message: 'must be "default" or an ISO 3166-1 alpha-2 country such as "GB" ("ZZ": numbers of no country)' }), z.number().nonnegative());

const SOCKETS_PER_HOST = 'must be a whole number of connections, at least 1';
const DNS_MS = 'must be a whole number of milliseconds, 0 or more';
const FAILED_TARGET_MS = 'must be a whole number of milliseconds from 0 (never skipped) to 3600000 (1 h)';
const MAX_LOOKUPS = 'must be a whole number of lookups, at least 1 (or null: the default)';

/** libuv's thread pool when UV_THREADPOOL_SIZE is not set: it runs getaddrinfo (dns.lookup), fs, async crypto and zlib. */
export const DEFAULT_THREAD_POOL_SIZE = 4;

/**
 * `webhooks`. `threadPoolSize` is libuv's thread pool as this process will have it (config/load.ts reads
 * UV_THREADPOOL_SIZE): `maxLookups` must stay below it.
 */
export function webhooksSchema(threadPoolSize: number = DEFAULT_THREAD_POOL_SIZE) {
  return z
    .object({
      /** Allow webhook URLs that resolve to loopback/private/link-local addresses (tests, on-prem only). */
      allowPrivate: z.boolean().default(false),
      /** The docs promise receivers 5 s to answer with a 2xx; the one deadline covers the DNS lookup and connect too. */
      timeoutMs: z.number().int().positive().default(5000),
      /** Delivery attempts; with `backoffMs` 5000 and 15 attempts the last retry is ~22 h after the first. */
      attempts: z.number().int().positive().default(15),
      /** First retry delay; doubles at each attempt (BullMQ exponential back-off). */
      backoffMs: z.number().int().positive().default(5000),
      /** How often a later event of a request re-checks whether the earlier ones were delivered (doubles, max 60 s). */
      orderPollMs: z.number().int().positive().default(500),
      /**
       * How long after an event was written a later event of its request waits for it while no webhook consumer
       * has handled it (its entry trimmed from the stream before anyone read it, or its consumer stuck); then the
       * later one is sent without it (a warning). Keep it well above twice `events.claimIdleMs` (a dead consumer's
       * entries are reclaimed after that). An event queued, or in retry, is waited for without this bound.
       */
      orderMaxWaitMs: z.number().int().positive().default(300_000),
      /**
       * A webhook not delivered this long after it was queued (its retries, or an account's open breaker, which
       * spends no attempt, kept it waiting) is given up: BullMQ's failed set, where `flashverify webhook replay`
       * finds it. Bounds what a receiver that never comes back leaves waiting in Redis. Default 3 days.
       */
      maxAgeMs: z.number().int().positive().default(259_200_000),
      /**
       * Worker processes (`--role worker` and `all`) send webhooks too. false: only `--role webhooks` processes
       * send them, and their HTTP work stays off the event loop that originates calls; run at least one.
       */
      inWorkers: z.boolean().default(true),
      /**
       * true: the process that reads an event sends its webhook at once, with no BullMQ job; a job only for one that
       * must wait (order, breaker, caps) or be retried. A third of a job's CPU per webhook, and webhooks that keep
       * pace where jobs fall seconds behind (README, BENCHMARKS.md). false: a job for every webhook. Off, with a
       * warning at start, unless `timeoutMs` is at least 1 s below `events.claimIdleMs` (an event whose webhook is in
       * flight longer would be reclaimed and sent twice).
       */
      direct: z.boolean().default(true),
      /** Webhook deliveries in flight per process that sends webhooks. */
      concurrency: z.number().int().positive().default(50),
      /**
       * Idle keep-alive connections to a receiver are closed after this (ms): shorter than common servers' own
       * idle timeouts (Node's 5 s), so that they rarely close one as we reuse it. 0: no keep-alive, one connection
       * per delivery.
       */
      keepAliveMs: z
        .int({ message: 'must be a whole number of milliseconds (0: no keep-alive)' })
        .min(0, { message: 'must be 0 (no keep-alive) or more milliseconds' })
        .default(4000),
      /** Connections per receiver origin (scheme, host, port) and worker process; more deliveries wait for one. */
      maxSocketsPerHost: z.int({ message: SOCKETS_PER_HOST }).min(1, { message: SOCKETS_PER_HOST }).default(32),
      /**
       * Answers for webhook hosts (every address of the name) are kept this long per process, shared by the SSRF
       * check before a delivery and the connect. 0: none kept, no failure and no stale answer either (lookups in
       * flight are still shared, and capped by `maxLookups`).
       */
      dnsCacheMs: z.int({ message: DNS_MS }).min(0, { message: DNS_MS }).default(30_000),
      /** A host the resolver failed on (no such name, or an error) is not asked again for this long; its deliveries fail at once. */
      dnsNegativeCacheMs: z.int({ message: DNS_MS }).min(0, { message: DNS_MS }).default(5_000),
      /** After `dnsCacheMs`, an answer is still used this long while a new lookup fails (not "no such name") or is slow. 0: never. */
      dnsStaleMs: z.int({ message: DNS_MS }).min(0, { message: DNS_MS }).default(300_000),
      /**
       * System name lookups in flight at once per process: each holds a libuv thread until the resolver answers or
       * gives up, so they must leave threads for file, crypto and zlib work: at most the pool's size - 1 (1 for a
       * pool of 1). null: 2, or that maximum when it is smaller.
       */
      maxLookups: z.int({ message: MAX_LOOKUPS }).min(1, { message: MAX_LOOKUPS }).nullable().default(null),
      /**
       * Deliveries in flight per account and worker process: an account whose receiver is slow or dead holds at
       * most this many of the `concurrency` slots. null: a fifth of `concurrency` (at least 1).
       */
      accountConcurrency: z.number().int().positive().nullable().default(null),
      /** Per-account circuit breaker (events/webhook-breaker.ts). */
      breaker: z
        .object({
          /** Failed deliveries in a row (timeouts, refusals, non-2xx) that open an account's breaker; 0 = never. */
          failures: z.number().int().min(0).default(5),
          /** The account's deliveries are deferred (no attempt spent) this long, then one probe delivery decides. */
          coolOffMs: z.number().int().positive().default(30_000),
          /** A failed probe doubles the cool-off, up to this. */
          maxCoolOffMs: z.number().int().positive().default(600_000),
        })
        .strict()
        .refine((b) => b.maxCoolOffMs >= b.coolOffMs, { message: 'maxCoolOffMs must be >= coolOffMs', path: ['maxCoolOffMs'] })
        .prefault({}),
    })
    .strict()
    .superRefine((w, ctx) => {
      if (w.accountConcurrency !== null && w.accountConcurrency > w.concurrency) {
        ctx.addIssue({
          code: 'custom',
          path: ['accountConcurrency'],
          message: `must be at most webhooks.concurrency (${w.concurrency}): it is a share of those slots`,
        });
      }
      // A pool of one thread cannot be spared one; there the cap is 1, and the cache alone keeps lookups rare.
      const lookupsAllowed = Math.max(1, threadPoolSize - 1);
      if (w.maxLookups !== null && w.maxLookups > lookupsAllowed) {
        ctx.addIssue({
          code: 'custom',
          path: ['maxLookups'],
          message:
            `must be at most ${lookupsAllowed}, below libuv's thread pool of ${threadPoolSize} (UV_THREADPOOL_SIZE, else 4), ` +
            'so that lookups the resolver never answers leave threads for file, crypto and zlib work',
        });
      }
    })
    .transform((w) => ({
      ...w,
      accountConcurrency: w.accountConcurrency ?? Math.max(1, Math.floor(w.concurrency / 5)),
      maxLookups: w.maxLookups ?? Math.max(1, Math.min(2, threadPoolSize - 1)),
    }));
}

/** The configuration's sections, without the checks across them (withCrossChecks). */
export const configObjectSchema = z
  .object({
    http: z
      .object({
        host: z.string().default('0.0.0.0'),
        port: z.number().int().min(0).max(65535).default(8080),
        bodyLimitBytes: z.number().int().positive().default(16 * 1024),
        /**
         * A request not received whole (headers and body) within this is answered 408 and its connection closed: a
         * client that sends its headers and then stalls (a body never finished) holds a slot of api.maxInFlight no
         * longer than this. 0: no limit.
         */
        requestTimeoutMs: z.number().int().min(0).max(600_000).default(10_000),
        /**
         * Which peers' X-Forwarded-For is believed for the client address (the per-address auth lock-out, logs):
         * false (none: the peer is the client) or the proxies' addresses (IPs, CIDRs, or proxy-addr's `loopback` /
         * `linklocal` / `uniquelocal`): the client is the last entry not one of them. true believes every entry, the
         * client's own first one included: anyone could then pick the address a failure is counted against.
         */
        trustProxy: z
          .union([
            z.boolean(),
            z
              .array(z.string().refine(trustedProxyForm, 'an IP address, a CIDR (e.g. 10.0.0.0/8), loopback, linklocal or uniquelocal'))
              .min(1),
          ])
          .default(false),
      })
      .strict(),
    redis: z
      .object({
        /** One URL; with `cluster`, one or more seed nodes of the cluster, comma-separated. */
        url: z.string(),
        prefix: z
          .string()
          .regex(/^[A-Za-z0-9_.{}-]+$/, 'letters, digits, "_", "-", "." and one {hash tag} only')
          .refine((p) => !/[{}]/.test(p) || /^[^{}]*\{[^{}]+\}[^{}]*$/.test(p), 'braces only around one non-empty hash tag, e.g. "{fv}"'),
        /**
         * Redis Cluster: every key is named under `prefix`, whose hash tag puts all of them (BullMQ's included) in one
         * hash slot, as the Lua scripts touch several keys at once. The cluster gives failover, not more throughput.
         */
        cluster: z.boolean().default(false),
        /**
         * At start-up, how long to wait for Redis to answer before exiting with an error that names it (exit code 69): a
         * Redis started beside the engine may come up a moment later. 0: one try.
         */
        startupWaitMs: z.number().int().min(0).max(600_000).default(10_000),
        /**
         * A PING on a connection of its own not answered this long (a Redis stopped, swapping, loading its data):
         * the api answers new /v1 requests 503 at once, without sending Redis anything, until a PING is answered.
         * Requests already sent wait for Redis. 0: off.
         */
        stallAfterMs: z.number().int().min(0).max(60_000).default(2000),
      })
      .strict()
      .superRefine((r, ctx) => {
        // A Sentinel URL lists its Sentinels with commas itself: one URL.
        const urls = r.url.trim().startsWith('sentinel://') ? [r.url.trim()] : r.url.split(',').map((u) => u.trim());
        if (urls.length > 1 && !r.cluster) {
          ctx.addIssue({ code: z.ZodIssueCode.custom, path: ['url'], message: 'a list of URLs is only for redis.cluster: true (its seed nodes)' });
        }
        for (const u of urls) {
          if (!r.cluster && u.startsWith('sentinel://')) {
            if (!/^sentinel:\/\/(?:[^@/]*@)?[^/?]+\/[^/?]+(?:\/\d+)?\/?(?:\?.*)?$/.test(u) || !sentinelHostsOk(u)) {
              ctx.addIssue({ code: z.ZodIssueCode.custom, path: ['url'], message: 'a Sentinel URL is sentinel://host:port[,host:port...]/<master name>[/<db>]' });
            }
          } else if (!/^(rediss?:\/\/|unix:\/\/\/)/.test(u)) {
            ctx.addIssue({ code: z.ZodIssueCode.custom, path: ['url'], message: `must be a redis://, rediss://, unix:///path/to/redis.sock or sentinel://host:port/<master name> URL${urls.length > 1 ? ` (a seed node is "${u}")` : ''}` });
          } else if (!u.startsWith('unix://') && !canParseUrl(u)) {
            ctx.addIssue({ code: z.ZodIssueCode.custom, path: ['url'], message: `${maskUrl(u)} is not a URL redis[s]://[[user]:password@]host[:port][/db] (is the port a number from 1 to 65535?)` });
          } else if (r.cluster && u.startsWith('unix://')) {
            ctx.addIssue({ code: z.ZodIssueCode.custom, path: ['url'], message: `${u}: a Redis Cluster is reached over TCP (redis:// or rediss://), not a Unix socket` });
          } else if (r.cluster && !/^rediss?:\/\/[^/]*(\/0?)?$/.test(u)) {
            ctx.addIssue({ code: z.ZodIssueCode.custom, path: ['url'], message: `${u}: a Redis Cluster has only database 0 (no /<db> path)` });
          }
        }
        if (r.cluster && !/\{[^{}]+\}/.test(r.prefix)) {
          ctx.addIssue({
            code: z.ZodIssueCode.custom,
            path: ['prefix'],
            message: `with redis.cluster, the prefix needs a hash tag so that every key is in one hash slot (the Lua scripts and BullMQ use several keys at once): e.g. "{${r.prefix.replace(/[{}]/g, '')}}"`,
          });
        }
      }),
    security: z
      .object({
        /** 32 bytes as 64 hex chars or base64. Empty: read or create `masterKeyFile`. */
        masterKey: z
          .string()
          .refine((k) => k === '' || keyBytes(k) !== undefined, KEY_FORM)
          .default(''),
        masterKeyFile: z.string().default('.flashverify/master.key'),
        /** Older keys, still accepted for decryption after a rotation. */
        previousMasterKeys: z.array(z.string().refine((k) => keyBytes(k) !== undefined, KEY_FORM)).default([]),
      })
      .strict(),
    log: z
      .object({
        level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
        pretty: z.boolean().default(false),
      })
      .strict(),
    api: z
      .object({
        /** Requests per second per API key unless the account says otherwise. */
        defaultRateLimitPerSecond: z.number().int().positive().default(10),
        /** How long the first response to an `Idempotency-Key` is replayed. */
        idempotencyTtlSeconds: z.number().int().positive().default(24 * 3600),
        /** How long a duplicate waits for the first request with its key to finish. */
        idempotencyWaitMs: z.number().int().positive().default(5000),
        /**
         * Successful Basic-auth results are reused in this process for this long (0: off), keyed by a salted
         * hash of key and secret: a suspended account or a regenerated secret takes effect within it.
         */
        authCacheMs: z.number().int().nonnegative().max(60_000).default(1000),
        /**
         * `/v1` requests in progress at once in this process (0: no limit). One more is answered at once with 503
         * `service_unavailable` and Retry-After, before any work: an overloaded process sheds load instead of
         * letting every request wait until the clients time out (work done for nobody).
         */
        maxInFlight: z.number().int().nonnegative().default(1000),
        /** Wrong API secrets, counted per client address and per API key over `windowSeconds`. */
        authFailures: z
          .object({
            /** From this many failures on, each further attempt is answered only after `delayMs`. */
            delayAfter: z.number().int().positive().default(5),
            delayMs: z.number().int().nonnegative().default(1000),
            /** From this many failures on, 429 `rate_limited` with Retry-After until the window ends. */
            lockAfter: z.number().int().positive().default(20),
            windowSeconds: z.number().int().positive().default(900),
          })
          .strict()
          .prefault({}),
      })
      .strict(),
    admin: z
      .object({
        /** Bearer token of the admin HTTP API (/admin/v1). Empty: the admin API is off and its routes answer 404. */
        token: z
          .string()
          .refine((t) => t === '' || (t.length >= 16 && /^[\x21-\x7E]+$/.test(t)), {
            message: 'must be empty (admin API off) or at least 16 printable characters without spaces',
          })
          .default(''),
      })
      .strict(),
    accounts: z
      .object({
        defaultCurrency: z.enum(['GBP', 'USD', 'EUR']).default('GBP'),
        /**
         * Account fields read on every request or event (fraud overrides, `webhook_url`) are reused in this
         * process for this long (0: off; accounts/account-field-cache.ts): a change made by another process
         * takes effect here within it, one made by this process at once.
         */
        fieldCacheMs: z.number().int().nonnegative().max(60_000).default(1000),
      })
      .strict(),
    verification: z
      .object({
        defaultExpirySeconds: z.number().int().positive().default(300),
        maxExpirySeconds: z.number().int().positive().default(600),
        maxCheckAttempts: z.number().int().positive().default(3),
        /** How long a finished verification record stays readable after it expires. */
        retentionSeconds: z.number().int().positive().default(7 * 24 * 3600),
        /** How often the worker role expires due requests (status `expired` + event), polled or not. */
        expirySweepMs: z.number().int().positive().default(1000),
        /** The workflow of `"method": "auto"` (src/verification/workflow.ts): 1-5 steps, each but the last with a timeout. */
        defaultWorkflow: z
          .array(
            z
              .object({ method: z.enum(['flash_call', 'voice', 'sms']), timeout_seconds: z.number().int().positive().optional() })
              .strict(),
          )
          .min(1)
          .max(5)
          // As for a request's workflow (verification/workflow.ts): a leftover job of step n must never fit step n+1.
          .refine((steps) => steps.every((st, i) => i === 0 || steps[i - 1]!.method !== st.method), 'two consecutive steps use the same method')
          .default([{ method: 'flash_call', timeout_seconds: 30 }, { method: 'voice', timeout_seconds: 45 }, { method: 'sms' }]),
        /** Smallest `timeout_seconds` a workflow step may ask for. */
        minStepTimeoutSeconds: z.number().int().positive().default(5),
        /**
         * A request without `locale`: its SMS text and voice prompts in the destination country's language (fr, es,
         * de) instead of English. Off by default: the contract's text is English ("Your FlashVerify code is: …").
         */
        languageByCountry: z.boolean().default(false),
      })
      .strict(),
    pricing: z
      .object({
        /** Price per method per destination country (ISO alpha-2, or "default"), in GBP. */
        flash_call: priceTable,
        voice: priceTable,
        sms: priceTable,
        /** Conversion from GBP to the account's currency. */
        fx: z.object({ GBP: z.number().positive(), USD: z.number().positive(), EUR: z.number().positive() }).strict(),
      })
      .strict(),
    numbers: z
      .object({
        ranges: z.array(rangeSchema).min(1, 'at least one DID range is needed for flash calls'),
        /** The same CLI does not call the same destination twice within this window. */
        cliCooldownSeconds: z.number().int().nonnegative().default(300),
      })
      .strict(),
    flash: z
      .object({
        /** How long to let the phone ring after the first 18x before CANCEL. */
        ringMs: z.number().int().nonnegative().default(2500),
        /** CANCEL if no 18x arrives within this time; outcome `no_ringing`. */
        ringingTimeoutMs: z.number().int().positive().default(15_000),
      })
      .strict(),
    voice: z
      .object({
        /** CANCEL a voice call not answered (200) within this time; outcome `no_answer`. */
        answerTimeoutMs: z.number().int().positive().default(30_000),
        /** Caller ID of voice calls (E.164); default: the first number of a DID range, same country first. */
        callerId: z.string().regex(/^\+[1-9]\d{6,14}$/, 'must be an E.164 number').optional(),
      })
      .strict(),
    media: z
      .object({
        /** `embedded`: our own RTP player; `freeswitch`: drachtio-fsmrf → FreeSWITCH (needs sip.backend drachtio). */
        backend: z.enum(['embedded', 'freeswitch']).default('embedded'),
        freeswitch: z
          .object({
            /** Media servers (mod_event_socket); each call goes to the least loaded one that is connected. */
            servers: z
              .array(
                z
                  .object({
                    address: z.string().min(1),
                    port: z.number().int().min(1).max(65535).default(8021),
                    secret: z.string().min(1).default('ClueCon'),
                  })
                  .strict(),
              )
              .min(1)
              .default([{ address: '127.0.0.1', port: 8021, secret: 'ClueCon' }]),
            /** Where FreeSWITCH's outbound event-socket connections (one per call) reach this worker. */
            listenAddress: z.string().default('127.0.0.1'),
            /** 0 = any free port (one per media server); a fixed port works with one server only. */
            listenPort: z.number().int().min(0).max(65535).default(0),
            /** assets/prompts as FreeSWITCH sees it; default: this install's assets/prompts (same host / shared volume). */
            promptDir: z.string().optional(),
            /** Speak the code with FreeSWITCH TTS (`speak engine|voice|text`) instead of playing the prompt files. */
            tts: z.object({ engine: z.string().min(1), voice: z.string().min(1) }).strict().optional(),
            /** sofia profile drachtio INVITEs on FreeSWITCH (drachtio/drachtio-freeswitch-mrf: drachtio_mrf). */
            profile: z.string().regex(/^[A-Za-z0-9_.-]+$/).default('drachtio_mrf'),
            /** Reconnect back-off to a lost event socket (jittered, doubling from min to max). */
            reconnectMinMs: z.number().int().positive().default(500),
            reconnectMaxMs: z.number().int().positive().default(30_000),
          })
          .strict()
          .refine((f) => f.reconnectMaxMs >= f.reconnectMinMs, { message: 'reconnectMaxMs must be >= reconnectMinMs' })
          .refine((f) => f.listenPort === 0 || f.servers.length === 1, { message: 'a fixed listenPort works with one server only; use 0' })
          .prefault({}),
        rtp: z
          .object({
            /** RTP ports, one even port per call (RFC 3550 11); the range bounds concurrent voice calls per worker. */
            portMin: z.number().int().min(1024).max(65534).default(20000),
            portMax: z.number().int().min(1025).max(65535).default(29999),
            /** Address in the SDP c= line; defaults to sip.listen.advertisedHost, then the listen host (127.0.0.1 for 0.0.0.0). */
            advertisedHost: z.string().optional(),
            /**
             * Nice value of the RTP sending thread (-20..19; Linux). Below 0 needs
             * CAP_SYS_NICE (root, or `cap_add: [SYS_NICE]` in docker); without it the
             * engine logs a warning and carries on. null: leave it at the process's.
             */
            threadNice: z.number().int().min(-20).max(19).nullable().default(-10),
            /**
             * SCHED_FIFO priority (1-99) of the RTP sending thread (Linux, set with
             * util-linux chrt), as FreeSWITCH -rp. On kernels with EEVDF (6.6+) a nice
             * value does not make the thread's wake-up preempt other work, so packets
             * can wait up to a scheduler tick; a real-time thread does not. Needs
             * CAP_SYS_NICE; without it a warning, and threadNice applies. The thread
             * sleeps between packets (a few % of a core per 100 calls) and the kernel
             * keeps 5 % of each core for other work (sched_rt_runtime_us). null: not asked.
             */
            realtimePriority: z.number().int().min(1).max(99).nullable().default(10),
          })
          .strict()
          .refine((r) => r.portMax > r.portMin, { message: 'portMax must be greater than portMin' }),
      })
      .strict(),
    sip: z
      .object({
        /** `embedded`: our own UAC over UDP/TCP; `drachtio`: drachtio-srf connected to drachtio-server. */
        backend: z.enum(['embedded', 'drachtio']).default('embedded'),
        /** Used when backend is `drachtio` (inbound connection: we dial drachtio-server's admin port). */
        drachtio: z
          .object({
            host: z.string().default('127.0.0.1'),
            port: z.number().int().min(1).max(65535).default(9022),
            secret: z.string().min(1).default('cymru'),
            /** Ping frames keep the connection (and idle firewalls) alive. */
            enablePing: z.boolean().default(true),
            /** drachtio-srf accepts 5 000 .. 300 000 ms. */
            pingIntervalMs: z.number().int().min(5000).max(300_000).default(10_000),
            /** Reconnect back-off (jittered, doubling from min to max). */
            reconnectMinMs: z.number().int().positive().default(1000),
            reconnectMaxMs: z.number().int().positive().default(30_000),
            /** No response at all to an INVITE within this → `timeout`; default 64 x sip.timers.t1Ms (Timer B). */
            callTimeoutMs: z.number().int().positive().optional(),
          })
          .strict()
          .refine((d) => d.reconnectMaxMs >= d.reconnectMinMs, { message: 'reconnectMaxMs must be >= reconnectMinMs' })
          .prefault({}),
        listen: z
          .object({
            host: z.string().default('0.0.0.0'),
            port: z.number().int().min(0).max(65535).default(5070),
            /** Host placed in Via and Contact; defaults to the listen host (or 127.0.0.1 for 0.0.0.0). */
            advertisedHost: z.string().optional(),
            transports: z.array(z.enum(['udp', 'tcp'])).min(1).default(['udp', 'tcp']),
          })
          .strict(),
        /**
         * RFC 3261 18.1.1: an INVITE to a UDP destination larger than this (bytes) goes over TCP to the same host
         * and port, and over UDP again when TCP is refused there; 0: always UDP. Embedded backend, with `tcp` in
         * `listen.transports` (the far end answers on a connection it opens to the Via's address).
         */
        udpMaxRequestBytes: z.number().int().min(0).max(65_000).default(1300),
        /**
         * SIP over TLS to `sips:` / `;transport=tls` trunks (embedded backend; drachtio-server has its own TLS
         * settings). Client side only: the certificate of every trunk is verified unless insecureSkipVerify.
         */
        tls: z
          .object({
            ...tlsFiles,
            /** Labs only: accept any certificate from any host. Loud warning at start. */
            insecureSkipVerify: z.boolean().default(false),
            handshakeTimeoutMs: tlsTimeouts.handshakeTimeoutMs.default(5000),
            idleTimeoutMs: tlsTimeouts.idleTimeoutMs.default(60_000),
          })
          .strict()
          .superRefine((t, ctx) => {
            for (const { key, message } of tlsFileProblems(t)) ctx.addIssue({ code: z.ZodIssueCode.custom, path: [key], message });
          })
          .prefault({}),
        /**
         * RFC 3263 DNS SRV for trunk host names without a port (embedded backend; drachtio-server resolves itself).
         * Node's SRV lookup returns no TTL: answers are kept `cacheMs`.
         */
        dns: z
          .object({
            /** DNS servers as `ip` or `ip:port` (`[ipv6]:port`); none: the system's /etc/resolv.conf. */
            servers: z
              .array(z.string().refine(isDnsServer, { message: 'must be ip, ip:port or [ipv6]:port (an address, not a name)' }))
              .min(1, { message: 'give at least one server, or leave sip.dns.servers out for the system resolver' })
              .optional(),
            /** SRV (and, with servers, address) answers kept this long; 0: asked for every call. */
            cacheMs: z.number().int().min(0).max(86_400_000).default(60_000),
            /** One DNS query gets this long per server; a lookup that fails fails its call `unreachable`. */
            timeoutMs: z.number().int().min(100).max(30_000).default(2000),
            /**
             * A target a request failed at (transport error, no response, 503 without Retry-After) is tried last by
             * the following requests this long; 0: never (every request starts at the first target in order).
             */
            failedTargetMs: z
              .number({ message: FAILED_TARGET_MS })
              .int({ message: FAILED_TARGET_MS })
              .min(0, { message: FAILED_TARGET_MS })
              .max(3_600_000, { message: FAILED_TARGET_MS })
              .default(30_000),
            /**
             * With another SRV target left, a request that has heard nothing at all (not even 100 Trying) from its
             * target this long goes to the next one, instead of waiting for Timer B/F (32 s); 0: Timer B/F only.
             * null: 8 × sip.timers.t1Ms (4 s by default: four UDP sends). Checked against sip.timers.t1Ms below.
             */
            targetTimeoutMs: z.number({ message: DNS_MS }).int({ message: DNS_MS }).min(0, { message: DNS_MS }).nullable().default(null),
            /**
             * RFC 3263 4.1 for a trunk URI with a host name, no port and no `transport` parameter: NAPTR of the host
             * chooses UDP or TCP (TLS for sips:) and the SRV name; without NAPTR records, SRV of UDP, then TCP.
             * false: SRV of the URI's own transport only (UDP for sip:, TLS for sips:).
             */
            naptr: z.boolean().default(true),
          })
          .strict()
          .prefault({}),
        /** RFC 3261 17.1.1.1 timer values. */
        timers: z
          .object({
            t1Ms: z.number().int().positive().default(500),
            t2Ms: z.number().int().positive().default(4000),
            t4Ms: z.number().int().positive().default(5000),
          })
          .strict()
          .refine((t) => t.t1Ms <= t.t2Ms, { path: ['t1Ms'], message: 'T1 must not be over T2 (RFC 3261 17.1.2.2: retransmissions double from T1 up to T2)' }),
        userAgent: z.string().default('flashverify'),
        trunks: z.array(trunkSchema).min(1, 'at least one SIP trunk is needed'),
        /**
         * Route advance: a flash or voice call that its trunk refused before it rang (unreachable, or answered with a
         * `trunkHealth.failureStatuses` status such as 503) is placed again at once on another live trunk, each trunk
         * once, within the same verification (engine/route-advance.ts). false: the call fails there.
         */
        routeAdvance: z.boolean().default(true),
        /**
         * Whose `cps` and `maxCalls` a trunk's are: `cluster` (default), the trunk's across every worker process on
         * this Redis and prefix (engine/cluster-limits.ts: CPS slots and channels counted in Redis); `process`, each
         * worker process's own (divide a carrier's limits by the worker processes; no Redis round trip per call).
         */
        trunkLimits: z.enum(['cluster', 'process']).default('cluster'),
        /** A trunk whose calls end `unreachable`/`timeout` (or a `failureStatuses` response) this many times in a row is marked down, then retried with back-off. */
        trunkHealth: z
          .object({
            failuresToMarkDown: z.number().int().positive().default(3),
            retryAfterMs: z.number().int().positive().default(5000),
            maxRetryAfterMs: z.number().int().positive().default(60_000),
            /**
             * Every worker process sends each trunk an OPTIONS ping this often (ms; 0 = off, the default: some SBCs
             * refuse or ignore OPTIONS). Unanswered pings count as failures with the calls'; an answered one brings
             * a down trunk back at once. `sip.trunks[].optionsPingMs` overrides it per trunk.
             */
            optionsPingMs: optionsPingMs.default(0),
            /**
             * Final responses that say the trunk itself failed, counted with `unreachable`/`timeout` (and for OPTIONS
             * pings): 503 Service Unavailable (RFC 3261 21.5.4: overload or maintenance) by default. Any other
             * response is an answer of a live trunk. [] : only transport errors and timeouts count.
             */
            failureStatuses: z.array(z.number().int().min(400).max(699, { message: 'must be SIP final statuses from 400 to 699' })).default([503]),
          })
          .strict()
          .refine((h) => h.retryAfterMs <= h.maxRetryAfterMs, { path: ['retryAfterMs'], message: 'must not be over maxRetryAfterMs (the back-off starts here and doubles up to it)' })
          .prefault({}),
      })
      .strict()
      .superRefine((sip, ctx) => {
        // Health, channels, CPS, route advance and metrics are all per trunk name: two trunks of one name would share
        // them, and a call refused on one would never advance to the other.
        duplicates(sip.trunks.map((t) => t.name)).forEach(([i, first]) =>
          ctx.addIssue({ code: z.ZodIssueCode.custom, path: ['trunks', i, 'name'], message: `trunk name "${sip.trunks[i]!.name}" is also sip.trunks[${first}]'s: each trunk needs a name of its own` }),
        );
        sip.trunks.forEach((trunk, i) => {
          const problem = trunkTransportProblem(trunk);
          if (problem) ctx.addIssue({ code: z.ZodIssueCode.custom, path: ['trunks', i, 'uri'], message: problem });
          // The rest of what a call needs of the trunk (URI form, port, headers, fromDomain), as its first call would.
          // Only for URIs the pattern above took (else that issue says it, once).
          const formed = [trunk.uri, trunk.proxy ?? trunk.uri].every((u) => /^sips?:\S+$/i.test(u));
          const unusable = formed && problem === undefined && trunkTransportProblem({ name: trunk.name, uri: trunk.proxy ?? trunk.uri }) === undefined ? trunkProblem(trunk) : undefined;
          // Named by the key it is about, so that a value from SIP_TRUNK_URI says so.
          if (unusable) ctx.addIssue({ code: z.ZodIssueCode.custom, path: ['trunks', i, unusable.key], message: unusable.message });
          if (trunk.proxy !== undefined) {
            const proxyProblem =
              sip.backend === 'drachtio'
                ? `trunk "${trunk.name}": proxy needs sip.backend embedded; drachtio-server has its own outbound proxy settings`
                : trunkTransportProblem({ name: trunk.name, uri: trunk.proxy });
            if (proxyProblem) ctx.addIssue({ code: z.ZodIssueCode.custom, path: ['trunks', i, 'proxy'], message: proxyProblem });
          }
          for (const { key, message } of trunkTlsProblems(trunk, sip.backend)) {
            ctx.addIssue({ code: z.ZodIssueCode.custom, path: ['trunks', i, 'tls', ...(key === '' ? [] : [key])], message });
          }
        });
        // Below T1 a healthy target could not even get its 100 Trying back over one retransmission interval; from
        // Timer B (64*T1) on, the transaction has ended first and the setting does nothing.
        const { t1Ms } = sip.timers;
        const target = sip.dns.targetTimeoutMs;
        if (target !== null && Number.isInteger(target) && target > 0 && (target < t1Ms || target >= 64 * t1Ms)) {
          ctx.addIssue({
            code: z.ZodIssueCode.custom,
            path: ['dns', 'targetTimeoutMs'],
            message: `must be 0 (Timer B/F only) or from sip.timers.t1Ms (${t1Ms}) to below Timer B (64 × t1Ms = ${64 * t1Ms})`,
          });
        }
      })
      // The default follows T1, so that a deployment with shorter timers gets a valid one.
      .transform((sip) => ({ ...sip, dns: { ...sip.dns, targetTimeoutMs: sip.dns.targetTimeoutMs ?? defaultTargetTimeoutMs(sip.timers.t1Ms) } })),
    worker: z
      .object({
        flashConcurrency: z.number().int().positive().default(500),
        /** Voice calls in flight per worker process (each holds an RTP port while it plays). */
        voiceConcurrency: z.number().int().positive().default(200),
        /** SMS jobs in flight per worker process (bounded in turn by the SMPP windows). */
        smsConcurrency: z.number().int().positive().default(100),
        /** Runs again of a delivery, webhook or workflow step-timer job whose process died (stalled) before the job fails. */
        maxStalledCount: z.number().int().nonnegative().default(1),
        /** BullMQ job lock of delivery, webhook and step-timer jobs; a dead process's jobs are seen as stalled once it lapses. */
        lockDurationMs: z.number().int().positive().default(30_000),
        /** How often BullMQ looks for stalled jobs (of dead workers). */
        stalledIntervalMs: z.number().int().positive().default(30_000),
        /** SIGTERM: stop taking jobs, CANCEL ringing flash calls, finish or BYE voice calls, flush events, exit 0 within this; a stop step still hanging when it runs out (Redis gone ...) makes the process exit 1 at this deadline. */
        shutdownGraceMs: z.number().int().positive().default(10_000),
        /** A `sent` request not dialled and without a job this long after creation (its api died before queueing) is queued again. */
        requeueAfterMs: z.number().int().positive().default(10_000),
      })
      .strict(),
    metrics: z
      .object({
        /** Serve Prometheus `GET /metrics` (on the API listener, and on the worker listener below). No auth: firewall it. */
        enabled: z.boolean().default(true),
        /** Listen address of the `--role worker` operator listener (/metrics, /healthz, /readyz). */
        host: z.string().default('0.0.0.0'),
        /** Port of that listener; 0 = no listener. The api and all roles serve these on the API port instead. */
        port: z.number().int().min(0).max(65535).default(9464),
      })
      .strict(),
    sms: smsSchema,
    fraud: fraudSchema.prefault({}),
    events: z
      .object({
        /** Approximate cap on the events stream length (XADD MAXLEN ~). */
        maxLen: z.number().int().positive().default(1_000_000),
        consumerGroup: z.string().min(1).default('status'),
        /** Consumer group that turns events into webhook jobs. */
        webhookGroup: z.string().min(1).default('webhooks'),
        /** Consumer group that starts the next step of a workflow (src/events/workflow-advancer.ts); "" = not in this process. */
        workflowGroup: z.string().default('workflow'),
        /** Events left unacknowledged this long by a dead consumer are taken over (XAUTOCLAIM); also how often that is checked. */
        claimIdleMs: z.number().int().positive().default(30_000),
      })
      .strict()
      // Each group gets every event: two readers under one name would split the events between them.
      .superRefine((e, ctx) => {
        const named: [string, string][] = [['consumerGroup', e.consumerGroup], ['webhookGroup', e.webhookGroup]];
        if (e.workflowGroup !== '') named.push(['workflowGroup', e.workflowGroup]);
        for (let i = 1; i < named.length; i++) {
          const same = named.slice(0, i).find(([, g]) => g === named[i]![1]);
          if (same) {
            ctx.addIssue({
              code: z.ZodIssueCode.custom,
              path: [named[i]![0]],
              message: `must differ from events.${same[0]} ("${same[1]}"): each consumer group gets every event, and two readers under one name would each get only part of them`,
            });
          }
        }
      }),
    webhooks: webhooksSchema(),
  })
  .strict();

/** The checks across sections of a configuration schema (configObjectSchema, or an extension of it). */
export function withCrossChecks<T extends typeof configObjectSchema>(schema: T) {
  return schema.superRefine((c, ctx) => {
    // A range may only name trunks that exist: a misspelt name would leave the range unusable without a word.
    const names = new Set(c.sip.trunks.map((t) => t.name));
    c.numbers.ranges.forEach((r, i) =>
      (r.trunks ?? []).forEach((name, j) => {
        if (!names.has(name)) {
          ctx.addIssue({ code: z.ZodIssueCode.custom, path: ['numbers', 'ranges', i, 'trunks', j], message: `no SIP trunk is named "${name}" (sip.trunks[].name: ${[...names].join(', ')})` });
        }
      }),
    );
    // A range's counters, quarantine and metrics are per prefix, an SMSC's receipts, binds and metrics per name.
    duplicates(c.numbers.ranges.map((r) => r.prefix)).forEach(([i, first]) =>
      ctx.addIssue({ code: z.ZodIssueCode.custom, path: ['numbers', 'ranges', i, 'prefix'], message: `range ${c.numbers.ranges[i]!.prefix} is also numbers.ranges[${first}]: list each range once` }),
    );
    duplicates(c.sms.smscs.map((x) => x.name)).forEach(([i, first]) =>
      ctx.addIssue({ code: z.ZodIssueCode.custom, path: ['sms', 'smscs', i, 'name'], message: `SMSC name "${c.sms.smscs[i]!.name}" is also sms.smscs[${first}]'s: each SMSC needs a name of its own (its receipts and binds are kept under it)` }),
    );
    const v = c.verification;
    if (v.defaultExpirySeconds > v.maxExpirySeconds) {
      ctx.addIssue({ code: z.ZodIssueCode.custom, path: ['verification', 'defaultExpirySeconds'], message: `${v.defaultExpirySeconds} is over verification.maxExpirySeconds (${v.maxExpirySeconds})` });
    }
    // "method": "auto" takes this workflow with the request's expiry (the default unless the request sets one): a
    // workflow no request could use would be every such request's 400, not a config error.
    v.defaultWorkflow.forEach((step, i) => {
      const last = i === v.defaultWorkflow.length - 1;
      if (step.timeout_seconds === undefined && !last) {
        ctx.addIssue({ code: z.ZodIssueCode.custom, path: ['verification', 'defaultWorkflow', i, 'timeout_seconds'], message: 'required on every step but the last (when the next step starts)' });
      } else if (step.timeout_seconds !== undefined && (step.timeout_seconds < v.minStepTimeoutSeconds || step.timeout_seconds > v.defaultExpirySeconds)) {
        ctx.addIssue({
          code: z.ZodIssueCode.custom,
          path: ['verification', 'defaultWorkflow', i, 'timeout_seconds'],
          message: `must be from verification.minStepTimeoutSeconds (${v.minStepTimeoutSeconds}) to verification.defaultExpirySeconds (${v.defaultExpirySeconds})`,
        });
      }
    });
  });
}

export const configSchema = withCrossChecks(configObjectSchema);

export type Config = z.infer<typeof configSchema>;
export type TrunkConfig = z.infer<typeof trunkSchema>;
export type RangeConfig = z.infer<typeof rangeSchema>;
export type SmscConfig = z.infer<typeof smscSchema>;
export type SmsSenderConfig = z.infer<typeof smsSenderSchema>;
export type SmsConfig = z.infer<typeof smsSchema>;
export type SipConfig = Config['sip'];
export type FraudConfig = Config['fraud'];
export type LineType = (typeof LINE_TYPES)[number];
export type TestNumber = z.infer<typeof testNumberSchema>;

function canParseUrl(text: string): boolean {
  try {
    const url = new URL(text);
    return url.hostname !== '' && url.port !== '0';
  } catch {
    return false;
  }
}

/** Every host:port of a sentinel:// URL has a port from 1 to 65535, if any. */
function sentinelHostsOk(url: string): boolean {
  const hosts = url.replace(/^sentinel:\/\/(?:[^@/]*@)?/, '').split('/')[0] ?? '';
  return hosts.split(',').every((h) => {
    const port = /^(?:\[[^\]]+\]|[^:]+)(?::(.*))?$/.exec(h.trim())?.[1];
    return port === undefined || isPortText(port);
  });
}

/** A URL with its password, if any, as `***` (for error messages). */
function maskUrl(text: string): string {
  return text.replace(/^([a-z]+:\/\/[^:@/]*:)[^@/]*@/i, '$1***@');
}

/** [index, index of its first occurrence] of each value listed before. */
function duplicates(values: readonly string[]): [number, number][] {
  const first = new Map<string, number>();
  const out: [number, number][] = [];
  values.forEach((v, i) => {
    const f = first.get(v);
    if (f === undefined) first.set(v, i);
    else out.push([i, f]);
  });
  return out;
}

/** A `sip.dns.servers` entry: `ip`, `ip:port` or `[ipv6]:port`, as Resolver.setServers takes them (no names). */
function isDnsServer(value: string): boolean {
  if (isIP(value) !== 0) return true;
  const m = /^\[([^\]]+)\]:(\d{1,5})$/.exec(value) ?? /^([^:[\]]+):(\d{1,5})$/.exec(value);
  return m !== null && isIP(m[1] ?? '') !== 0 && isPortText(m[2] ?? '');
}

/** A port written in a URL or host:port: 1 to 5 digits, 1 to 65535. */
function isPortText(text: string): boolean {
  return /^\d{1,5}$/.test(text) && Number(text) >= 1 && Number(text) <= 65535;
}

/** An entry of http.trustProxy's list, as proxy-addr (Fastify's) takes it: an IP, a CIDR, or a named range. */
function trustedProxyForm(entry: string): boolean {
  if (entry === 'loopback' || entry === 'linklocal' || entry === 'uniquelocal') return true;
  const [address, bits, ...rest] = entry.split('/');
  const family = isIP(address ?? '');
  if (family === 0 || rest.length > 0) return false;
  if (bits === undefined) return true;
  if (!/^\d{1,3}$/.test(bits)) return false;
  return Number(bits) <= (family === 4 ? 32 : 128);
}
