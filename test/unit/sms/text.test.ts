import { readFileSync } from 'node:fs';
import smpp from 'smpp';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import {
  decodeShortMessage,
  encodeShortMessage,
  renderSms,
  SmsTextError,
  validateTemplate,
} from '../../../src/sms/text.js';

function thrown(fn: () => unknown): SmsTextError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(SmsTextError);
    return err as SmsTextError;
  }
  throw new Error('expected an SmsTextError');
}

const shipped = parse(readFileSync(new URL('../../../config/default.yaml', import.meta.url), 'utf8')) as {
  sms: { templates: Record<string, string> };
};

describe('renderSms with the shipped templates (config/default.yaml)', () => {
  const templates = shipped.sms.templates;

  it('ships en, fr, es and de', () => {
    expect(Object.keys(templates).sort()).toEqual(['de', 'en', 'es', 'fr']);
  });

  it.each([
    ['en', 'gsm7', 'Your FlashVerify code is: 482916'],
    ['fr', 'gsm7', 'Votre code FlashVerify est : 482916'],
    ['de', 'gsm7', 'Ihr FlashVerify-Code lautet: 482916'],
    // 'ó' is not in GSM 03.38 (ò, é, ñ, ü, à are; ó, á, í, ú are not): UCS-2.
    ['es', 'ucs2', 'Su código FlashVerify es: 482916'],
  ] as const)('%s renders as %s', (lang, encoding, text) => {
    const template = templates[lang];
    expect(template).toBeDefined();
    expect(renderSms(template ?? '', '482916')).toEqual({ encoding, text });
    expect(() => validateTemplate(template ?? '')).not.toThrow();
  });
});

describe('renderSms', () => {
  it('replaces every {code} and keeps "$" patterns in the code literal', () => {
    expect(renderSms('{code} is {code}', '0042')).toEqual({ encoding: 'gsm7', text: '0042 is 0042' });
    expect(renderSms('x {code}', "$&$'").text).toBe("x $&$'");
  });

  it.each([
    ['Cyrillic', 'Ваш код: {code}'],
    ['an emoji', 'Code {code} 🔐'],
    ['a backquote', 'Code `{code}`'],
    ['Chinese', '您的验证码是 {code}'],
  ])('chooses UCS-2 for %s', (_name, template) => {
    expect(renderSms(template, '1234').encoding).toBe('ucs2');
  });

  it('keeps GSM-7 for the extension table and the Greek capitals', () => {
    expect(renderSms('[{code}] {~} €5 ΔΦΓ', '1234')).toEqual({ encoding: 'gsm7', text: '[1234] {~} €5 ΔΦΓ' });
  });

  it('accepts 160 septets and refuses 161, counting extension characters as 2', () => {
    expect(renderSms(`${'a'.repeat(156)}{code}`, '1234').text).toHaveLength(160);
    const e = thrown(() => renderSms(`${'a'.repeat(157)}{code}`, '1234'));
    expect(e.detail).toMatchObject({ length: 161, limit: 160, encoding: 'gsm7' });
    expect(e.message).toMatch(/161 GSM-7 septets.*160/);

    expect(renderSms(`${'€'.repeat(78)}{code}`, '1234').text).toHaveLength(82); // 156 + 4 septets
    expect(thrown(() => renderSms(`${'€'.repeat(79)}{code}`, '1234')).detail).toMatchObject({ length: 162, limit: 160 });
  });

  it('accepts 70 UCS-2 units and refuses 71, counting a surrogate pair as 2', () => {
    expect(renderSms(`${'ж'.repeat(66)}{code}`, '1234').encoding).toBe('ucs2');
    const e = thrown(() => renderSms(`${'ж'.repeat(67)}{code}`, '1234'));
    expect(e.detail).toMatchObject({ length: 71, limit: 70, encoding: 'ucs2', character: 'ж', position: 0 });
    expect(e.message).toMatch(/71 UCS-2.*'ж'.*70/);

    expect(renderSms(`${'😀'.repeat(33)}{code}`, '1234').text).toHaveLength(70);
    expect(thrown(() => renderSms(`${'😀'.repeat(33)}x{code}`, '1234')).detail).toMatchObject({ length: 71 });
  });

  it('says which character forced UCS-2 when the text is too long', () => {
    const e = thrown(() => renderSms(`Su código es {code}. ${'a'.repeat(60)}`, '123456'));
    expect(e.detail).toMatchObject({ character: 'ó', position: 4, encoding: 'ucs2' });
  });

  it('refuses a template without {code} and a broken surrogate', () => {
    expect(thrown(() => renderSms('Your code is: {CODE}', '1234')).message).toContain('{code}');
    expect(() => renderSms('x \uD83D {code}', '1234')).toThrow(SmsTextError);
  });
});

describe('validateTemplate', () => {
  it('needs {code}', () => {
    expect(() => validateTemplate('Your code')).toThrow(SmsTextError);
  });

  it('needs a 6-digit code to fit one part', () => {
    expect(() => validateTemplate(`${'a'.repeat(154)}{code}`)).not.toThrow();
    expect(() => validateTemplate(`${'a'.repeat(155)}{code}`)).toThrow(/161 GSM-7 septets/);
    expect(() => validateTemplate(`${'é'.repeat(10)}ó${'a'.repeat(53)}{code}`)).not.toThrow();
    expect(() => validateTemplate(`${'é'.repeat(10)}ó${'a'.repeat(54)}{code}`)).toThrow(/71 UCS-2/);
  });
});

describe('encodeShortMessage', () => {
  const dc0 = { gsm7DataCoding: 0, gsm7Packed: false } as const;
  const dc0Packed = { gsm7DataCoding: 0, gsm7Packed: true } as const;
  const ia5 = { gsm7DataCoding: 1, gsm7Packed: false } as const;

  it('sends GSM-7 unpacked as one septet per octet under data_coding 0', () => {
    const { dataCoding, shortMessage } = encodeShortMessage({ encoding: 'gsm7', text: '@£ [1]€' }, dc0);
    expect(dataCoding).toBe(0);
    expect(shortMessage.toString('hex')).toBe('000120' + '1b3c' + '31' + '1b3e' + '1b65');
    expect(decodeShortMessage(0, shortMessage)).toBe('@£ [1]€');
  });

  it('packs GSM-7 when the SMSC wants it, padding 8n-1 septets with <CR>', () => {
    const hello = encodeShortMessage({ encoding: 'gsm7', text: 'hellohello' }, dc0Packed);
    expect(hello).toEqual({ dataCoding: 0, shortMessage: Buffer.from('e8329bfd4697d9ec37', 'hex') });
    expect(decodeShortMessage(0, hello.shortMessage, true)).toBe('hellohello');

    const seven = encodeShortMessage({ encoding: 'gsm7', text: '1234567' }, dc0Packed);
    expect(seven.shortMessage).toHaveLength(7);
    expect(seven.shortMessage[6]! >> 1).toBe(0x0d); // the last 7 bits are <CR>, not '@'
    expect(decodeShortMessage(0, seven.shortMessage, true)).toBe('1234567');
  });

  it('sends plain ASCII as IA5 under data_coding 1', () => {
    const r = encodeShortMessage({ encoding: 'gsm7', text: 'Code: 1234 @ $_ {x}\n' }, ia5);
    expect(r).toEqual({ dataCoding: 1, shortMessage: Buffer.from('Code: 1234 @ $_ {x}\n', 'ascii') });
    expect(decodeShortMessage(1, r.shortMessage)).toBe('Code: 1234 @ $_ {x}\n');
  });

  it('falls back to data_coding 0 when a GSM-7 character has no IA5 byte', () => {
    for (const text of ['Prix: 5€', 'Café 1234', 'Ihr Code: ä']) {
      const r = encodeShortMessage({ encoding: 'gsm7', text }, ia5);
      expect(r.dataCoding).toBe(0);
      expect(decodeShortMessage(0, r.shortMessage)).toBe(text);
    }
  });

  it('sends UCS-2 as UTF-16BE under data_coding 8, surrogate pairs included', () => {
    const r = encodeShortMessage({ encoding: 'ucs2', text: 'Su código 🔐' }, dc0Packed);
    expect(r.dataCoding).toBe(8);
    expect(r.shortMessage.subarray(0, 4).toString('hex')).toBe('00530075');
    expect(r.shortMessage.subarray(-4).toString('hex')).toBe('d83ddd10') // U+1F510;
    expect(decodeShortMessage(8, r.shortMessage)).toBe('Su código 🔐');
  });

  it('refuses text that does not fit one part or is not GSM-7', () => {
    expect(() => encodeShortMessage({ encoding: 'gsm7', text: 'x'.repeat(161) }, dc0)).toThrow(SmsTextError);
    expect(() => encodeShortMessage({ encoding: 'ucs2', text: 'ж'.repeat(71) }, dc0)).toThrow(SmsTextError);
    expect(() => encodeShortMessage({ encoding: 'gsm7', text: 'código' }, ia5)).toThrow(/'ó'/);
  });

  it('goes out byte for byte through node-smpp when short_message is a Buffer and data_coding is set', () => {
    for (const [message, smsc] of [
      [{ encoding: 'gsm7', text: 'Code {1234} €' }, dc0],
      [{ encoding: 'gsm7', text: 'Code 1234' }, ia5],
      [{ encoding: 'gsm7', text: 'hellohello' }, dc0Packed],
      [{ encoding: 'ucs2', text: 'Код 1234' }, dc0],
    ] as const) {
      const { dataCoding, shortMessage } = encodeShortMessage(message, smsc);
      const wire = new smpp.PDU('submit_sm', {
        destination_addr: '447700900123',
        data_coding: dataCoding,
        short_message: shortMessage,
      }).toBuffer();
      // data_coding, sm_default_msg_id, sm_length, short_message close the body.
      const tail = wire.subarray(wire.length - shortMessage.length - 3);
      expect(tail[0]).toBe(dataCoding);
      expect(tail[2]).toBe(shortMessage.length);
      expect(Buffer.compare(tail.subarray(3), shortMessage)).toBe(0);
    }
  });
});

describe('decodeShortMessage', () => {
  it('reads data_coding 3 as Latin-1 and unknown codings as Latin-1 too', () => {
    expect(decodeShortMessage(3, Buffer.from('café', 'latin1'))).toBe('café');
    expect(decodeShortMessage(4, Buffer.from([0x41, 0xe9]))).toBe('Aé');
  });

  it('reads data_coding 0xF0-0xF3 (message class) as GSM-7', () => {
    expect(decodeShortMessage(0xf1, Buffer.from([0x00, 0x11, 0x1b, 0x65]))).toBe('@_€');
  });

  it('ignores an odd trailing octet in UCS-2', () => {
    expect(decodeShortMessage(8, Buffer.from([0x00, 0x41, 0x00]))).toBe('A');
  });
});
