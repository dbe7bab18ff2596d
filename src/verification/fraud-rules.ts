import { isIP } from 'node:net';
import { parsePhoneNumberFromString } from 'libphonenumber-js/max';
import { z } from 'zod';
import {
  countryCodeSchema,
  LIVE_SCOPES,
  lineTypeSchema,
  NO_COUNTRY,
  testNumberSchema,
  velocityWindowSchema,
  type FraudConfig,
  type LineType,
  type TestNumber,
} from '../config/schema.js';
import { ApiError } from './errors.js';
import type { Method } from './types.js';

/**
 * Fraud rules that need no state: which destinations an account may reach by
 * which method, and the policy (server defaults + account overrides) that the
 * stateful controls (fraud-controls.ts) apply. Pure, so that a workflow step
 * can screen each of its methods with the same rules as POST /v1/verify.
 */

/** An account's overrides, stored as JSON in its hash (field `fraud`); every key optional. */
export const accountFraudSchema = z
  .object({
    velocity: z
      .object({
        perNumber: velocityWindowSchema.optional(),
        perPrefix: velocityWindowSchema.optional(),
        perIp: velocityWindowSchema.optional(),
      })
      .strict()
      .optional(),
    /** Narrow the server's lists, never widen them: the server's deny (and allow) list always applies too. */
    countries: z
      .object({
        allow: z.array(countryCodeSchema).max(300).optional(),
        deny: z.array(countryCodeSchema).max(300).optional(),
      })
      .strict()
      .optional(),
    lineTypes: z
      .object({
        flashCall: z.array(lineTypeSchema).optional(),
        blocked: z.array(lineTypeSchema).optional(),
        allowUnknown: z.boolean().optional(),
      })
      .strict()
      .optional(),
    liveVerification: z.enum(LIVE_SCOPES).optional(),
    maxSends: z.number().int().min(1).max(20).optional(),
    /** Added to the server's test numbers (an account's entry wins for the same number). */
    testNumbers: z.array(testNumberSchema).max(100).optional(),
  })
  .strict();
export type AccountFraudOverrides = z.infer<typeof accountFraudSchema>;

export interface CountryLists {
  allow: readonly string[];
  deny: readonly string[];
}

/** The rules in force for one account. */
export interface FraudPolicy {
  velocity: FraudConfig['velocity'];
  lineTypes: FraudConfig['lineTypes'];
  server: CountryLists;
  /** The account's lists, when it has any: they apply on top of the server's. */
  account: CountryLists | undefined;
  liveVerification: FraudConfig['liveVerification'];
  maxSends: number;
  testNumbers: readonly TestNumber[];
}

export function fraudPolicy(server: Readonly<FraudConfig>, account: AccountFraudOverrides | undefined): FraudPolicy {
  const a = account ?? {};
  const tests = new Map<string, TestNumber>();
  for (const t of [...server.testNumbers, ...(a.testNumbers ?? [])]) tests.set(t.number, t);
  return {
    velocity: { ...server.velocity, ...stripUndefined(a.velocity ?? {}) },
    lineTypes: { ...server.lineTypes, ...stripUndefined(a.lineTypes ?? {}) },
    server: server.countries,
    account: a.countries ? { allow: a.countries.allow ?? [], deny: a.countries.deny ?? [] } : undefined,
    liveVerification: a.liveVerification ?? server.liveVerification,
    maxSends: a.maxSends ?? server.maxSends,
    testNumbers: [...tests.values()],
  };
}

/**
 * Why a destination country is refused, or undefined when it is allowed. The
 * server's lists always apply (an operator's deny list is a legal or carrier
 * constraint no customer may lift); an account's lists can only narrow them:
 * a country must pass both.
 */
export function countryRefusal(policy: FraudPolicy, country: string): string | undefined {
  const refused = (lists: CountryLists): boolean => lists.deny.includes(country) || (lists.allow.length > 0 && !lists.allow.includes(country));
  const what =
    country === NO_COUNTRY
      ? 'a number of no country (ZZ: a satellite or international network code such as +881, +882, +883, +870)'
      : `destination country ${country}`;
  if (refused(policy.server)) return `${what} is not allowed on this service`;
  if (policy.account && refused(policy.account)) return `${what} is not allowed for this account`;
  return undefined;
}

/** A destination to screen: its type from parseDestination's parse when it has one, else parsed again (lineTypeOf). */
export interface ScreenedNumber {
  e164: string;
  country: string;
  lineType?: () => LineType | undefined;
}

/** The libphonenumber-js type of a number (max metadata), undefined when it cannot be told. */
export function lineTypeOf(e164: string): LineType | undefined {
  return parsePhoneNumberFromString(e164)?.getType() as LineType | undefined;
}

const TYPE_WORDS: Record<LineType, string> = {
  MOBILE: 'a mobile number',
  FIXED_LINE: 'a fixed-line number',
  FIXED_LINE_OR_MOBILE: 'a fixed-line or mobile number',
  PREMIUM_RATE: 'a premium-rate number',
  TOLL_FREE: 'a toll-free number',
  SHARED_COST: 'a shared-cost number',
  VOIP: 'a VoIP number',
  PERSONAL_NUMBER: 'a personal (follow-me) number',
  PAGER: 'a pager number',
  UAN: 'a universal access number',
  VOICEMAIL: 'a voicemail access number',
};

/** Why this number type is refused for this method, or undefined when it is accepted. */
export function lineTypeRefusal(policy: FraudPolicy, type: LineType | undefined, method: Method): string | undefined {
  const rules = policy.lineTypes;
  if (type === undefined) {
    return rules.allowUnknown ? undefined : 'the type of this number (mobile, fixed line ...) cannot be determined';
  }
  if (rules.blocked.includes(type)) return `${TYPE_WORDS[type]} is not accepted`;
  if (method === 'flash_call') return flashRefusal(policy, type);
  return undefined;
}

/** Why a flash call may not go to this (not blocked) type, or undefined: a missed call means nothing on a landline. */
function flashRefusal(policy: FraudPolicy, type: LineType | undefined): string | undefined {
  if (type === undefined || policy.lineTypes.flashCall.includes(type)) return undefined;
  return `flash calls go to mobile numbers only and this is ${TYPE_WORDS[type]}; use method "voice" or "sms"`;
}

/**
 * Screens a destination for a method: country lists, then number type.
 * Throws 400 `invalid_phone`: the docs' catalogue has no closer code, and
 * clients already treat it as "ask the user for another number", which is
 * the right reaction; the message names the reason.
 */
export function screenDestination(policy: FraudPolicy, dest: ScreenedNumber, method: Method): void {
  const country = countryRefusal(policy, dest.country);
  if (country) throw new ApiError('invalid_phone', `phone_number refused: ${country}`);
  const type = lineTypeRefusal(policy, dest.lineType ? dest.lineType() : lineTypeOf(dest.e164), method);
  if (type) throw new ApiError('invalid_phone', `phone_number refused: ${type}`);
}

/**
 * Screens a destination for every step of a workflow, up front. Country lists
 * and blocked types refuse the whole request (400 invalid_phone, as
 * screenDestination). A number a flash call may not go to (a landline, a VoIP
 * number ...): a workflow the customer wrote is refused with 400 invalid_phone
 * naming its first flash step (`workflow[1] (flash_call)`), whichever step it
 * is; the server's default workflow (`"method": "auto"`, `flash` =
 * "leave_out") instead loses its flash steps (withoutMethods), and is refused
 * only when no step would be left. Returns the methods to leave out.
 */
export function screenWorkflow(
  policy: FraudPolicy,
  dest: ScreenedNumber,
  methods: readonly Method[],
  flash: 'refuse' | 'leave_out',
): Set<Method> {
  const country = countryRefusal(policy, dest.country);
  if (country) throw new ApiError('invalid_phone', `phone_number refused: ${country}`);
  const type = dest.lineType ? dest.lineType() : lineTypeOf(dest.e164);
  // The rules of every method (blocked types, unknown types): asked as for voice, which has no rule of its own.
  const blocked = lineTypeRefusal(policy, type, 'voice');
  if (blocked) throw new ApiError('invalid_phone', `phone_number refused: ${blocked}`);
  const why = flashRefusal(policy, type);
  const at = methods.indexOf('flash_call');
  if (!why || at < 0) return new Set();
  if (flash === 'refuse' || methods.every((m) => m === 'flash_call')) {
    throw new ApiError('invalid_phone', `phone_number refused for workflow[${at}] (flash_call): ${why}`);
  }
  return new Set<Method>(['flash_call']);
}

/** The number minus its last 4 digits: the unit of the per-prefix velocity limit. */
export function numberPrefix(e164: string): string {
  return e164.slice(0, -4);
}

export function findTestNumber(policy: FraudPolicy, e164: string): TestNumber | undefined {
  return policy.testNumbers.find((t) => t.number === e164);
}

/** The optional `client_ip` of POST /v1/verify: an IPv4 or IPv6 address (400 invalid_request otherwise). */
export function parseClientIp(value: unknown): string | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'string' || isIP(value) === 0) {
    throw new ApiError('invalid_request', 'client_ip must be an IPv4 or IPv6 address');
  }
  return canonicalIp(value);
}

/**
 * One client, one counter, whatever the spelling: IPv4 as is; an IPv4-mapped IPv6 address (::ffff:192.0.2.1) as its
 * IPv4; any other IPv6 address by its /64 (RFC 4291: one subnet, which a single client holds whole; counting each of
 * its 2^64 addresses apart would let it step round the limit), written in its one compressed form (RFC 5952).
 */
export function canonicalIp(ip: string): string {
  if (isIP(ip) === 4) return ip;
  const words = ipv6Words(ip);
  if (words.slice(0, 5).every((w) => w === 0) && words[5] === 0xffff) {
    return [words[6]! >> 8, words[6]! & 0xff, words[7]! >> 8, words[7]! & 0xff].join('.');
  }
  // The /64: the first four words, the rest zero, compressed by the URL parser (RFC 5952 form).
  const subnet = [...words.slice(0, 4), 0, 0, 0, 0].map((w) => w.toString(16)).join(':');
  return `${new URL(`http://[${subnet}]/`).hostname.slice(1, -1)}/64`;
}

/** The eight 16-bit words of an IPv6 address (isIP said 6), an embedded dotted IPv4 tail included. */
function ipv6Words(ip: string): number[] {
  let text = ip.toLowerCase().replace(/%.*$/, '');
  const dotted = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(text);
  if (dotted) {
    const [a, b, c, d] = dotted.slice(1).map(Number) as [number, number, number, number];
    text = text.slice(0, dotted.index) + `${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const [head, tail] = text.split('::') as [string, string | undefined];
  const part = (s: string | undefined): number[] => (s ? s.split(':').map((w) => parseInt(w, 16)) : []);
  const left = part(head);
  const right = part(tail);
  const fill = tail === undefined ? [] : new Array<number>(8 - left.length - right.length).fill(0);
  return [...left, ...fill, ...right];
}

/** Drops keys whose value is undefined, so that spreading the result never erases a default. */
function stripUndefined<T extends object>(o: T): { [K in keyof T]?: Exclude<T[K], undefined> } {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as { [K in keyof T]?: Exclude<T[K], undefined> };
}
