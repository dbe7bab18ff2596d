import pino from 'pino';
import { systemClock, type SipTimerConfig } from '../../../src/sip/clock.js';
import { hdr, type ParsedResponse, type SipRequest } from '../../../src/sip/message.js';
import { parseMessage } from '../../../src/sip/parser.js';
import type { ClientTransactionOptions } from '../../../src/sip/transactions/transaction.js';

export const TIMERS: SipTimerConfig = { t1Ms: 500, t2Ms: 4000, t4Ms: 5000 };
export const BRANCH = 'z9hG4bKtest1';

export function request(method: string): SipRequest {
  return {
    kind: 'request',
    method,
    uri: 'sip:+447700900000@127.0.0.1:5060;user=phone',
    headers: [
      hdr('Via', `SIP/2.0/UDP 127.0.0.1:5070;branch=${BRANCH};rport`),
      hdr('Max-Forwards', '70'),
      hdr('From', '<sip:+441@example.com;user=phone>;tag=ft'),
      hdr('To', '<sip:+447700900000@127.0.0.1:5060;user=phone>'),
      hdr('Call-ID', 'tx-test'),
      hdr('CSeq', `1 ${method}`),
    ],
    body: undefined,
  };
}

export function response(status: number, method: string, toTag = 'tt'): ParsedResponse {
  const text =
    `SIP/2.0 ${status} Whatever\r\n` +
    `Via: SIP/2.0/UDP 127.0.0.1:5070;branch=${BRANCH};rport=5070\r\n` +
    'From: <sip:+441@example.com;user=phone>;tag=ft\r\n' +
    `To: <sip:+447700900000@127.0.0.1:5060;user=phone>;tag=${toTag}\r\n` +
    'Call-ID: tx-test\r\n' +
    `CSeq: 1 ${method}\r\n` +
    'Content-Length: 0\r\n\r\n';
  const r = parseMessage(Buffer.from(text));
  if (!r.ok || r.message.kind !== 'response') throw new Error('bad test response');
  return r.message;
}

export interface Harness {
  sent: string[];
  events: string[];
  terminated: number;
  options: ClientTransactionOptions;
}

/** Options with a recording transport and TU; timers from the (faked) globals. */
export function harness(method: string, reliable: boolean): Harness {
  const h: Harness = {
    sent: [],
    events: [],
    terminated: 0,
    options: undefined as unknown as ClientTransactionOptions,
  };
  h.options = {
    request: request(method),
    branch: BRANCH,
    transport: {
      reliable,
      send: (data) => {
        h.sent.push(data.toString('latin1').split('\r\n')[0] ?? '');
        lastBytes.value = data.toString('latin1');
      },
    },
    user: {
      receiveResponse: (r) => h.events.push(`response ${r.status}`),
      onRequestTimeout: () => h.events.push('timeout'),
      onTransportError: (e) => h.events.push(`transport error ${e.message}`),
    },
    clock: systemClock,
    timers: TIMERS,
    logger: pino({ level: 'silent' }),
    onTerminated: () => h.terminated++,
  };
  return h;
}

export const lastBytes = { value: '' };
