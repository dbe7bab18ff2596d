import { readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { AppError } from '../errors/app-error.js';
import { PROMPT_LANGUAGES, type Announcement, type PromptItem, type PromptLanguage } from './media-player.js';

/**
 * Pre-rendered prompts (scripts/render-prompts.sh): assets/prompts/<lang>/
 * {intro,again,0..9}.wav, 8 kHz mono 16-bit PCM WAV. Loaded lazily, cached.
 */

/** assets/prompts at the repository root, from src/media or dist/media alike. */
export const DEFAULT_PROMPTS_DIR = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', 'assets', 'prompts');

export const SAMPLE_RATE = 8000;

/** Silences of the announcement, ms: after the intro, between digits, before "again". */
export const ANNOUNCEMENT_GAPS = { afterIntroMs: 400, betweenDigitsMs: 350, beforeAgainMs: 700, afterAgainMs: 400 } as const;

/** "Your verification code is: 4. 8. 2. 9. Again: 4. 8. 2. 9." as prompt items. */
export function codeAnnouncement(code: string, language: PromptLanguage): Announcement {
  if (!/^\d+$/.test(code)) throw new AppError('invalid_code', 'a voice code is digits only');
  const digits = (): PromptItem[] =>
    [...code].flatMap((d, i) => (i === 0 ? [{ prompt: d }] : [{ silenceMs: ANNOUNCEMENT_GAPS.betweenDigitsMs }, { prompt: d }]));
  return {
    language,
    items: [
      { prompt: 'intro' },
      { silenceMs: ANNOUNCEMENT_GAPS.afterIntroMs },
      ...digits(),
      { silenceMs: ANNOUNCEMENT_GAPS.beforeAgainMs },
      { prompt: 'again' },
      { silenceMs: ANNOUNCEMENT_GAPS.afterAgainMs },
      ...digits(),
    ],
  };
}

const COUNTRY_LANGUAGE: Record<string, PromptLanguage> = {
  FR: 'fr', BE: 'fr', LU: 'fr', MC: 'fr', SN: 'fr', CI: 'fr', CM: 'fr', MA: 'fr', TN: 'fr', DZ: 'fr',
  ES: 'es', MX: 'es', AR: 'es', CO: 'es', CL: 'es', PE: 'es', VE: 'es', EC: 'es', GT: 'es', CU: 'es',
  BO: 'es', DO: 'es', HN: 'es', PY: 'es', SV: 'es', NI: 'es', CR: 'es', PA: 'es', UY: 'es',
  DE: 'de', AT: 'de', CH: 'de', LI: 'de',
};

export function isPromptLanguage(value: unknown): value is PromptLanguage {
  return typeof value === 'string' && (PROMPT_LANGUAGES as readonly string[]).includes(value);
}

/** The destination country's language, when it has prompts (fr, es, de) other than English. */
export function countryLanguage(country: string | undefined | null): PromptLanguage | undefined {
  return COUNTRY_LANGUAGE[country ?? ''];
}

/**
 * The request's locale when given, else (`byCountry`: `verification.languageByCountry`) the destination country's
 * language, else English.
 */
export function languageFor(locale: string | undefined | null, country: string | undefined | null, byCountry: boolean): PromptLanguage {
  if (isPromptLanguage(locale)) return locale;
  return (byCountry ? countryLanguage(country) : undefined) ?? 'en';
}

/** Reads the samples of an 8 kHz mono 16-bit PCM WAV file. */
export function readWav(buf: Buffer, name = 'wav'): Int16Array {
  if (buf.toString('ascii', 0, 4) !== 'RIFF' || buf.toString('ascii', 8, 12) !== 'WAVE') {
    throw new AppError('prompt_invalid', `${name}: not a RIFF/WAVE file`);
  }
  let offset = 12;
  let fmtOk = false;
  while (offset + 8 <= buf.length) {
    const id = buf.toString('ascii', offset, offset + 4);
    const size = buf.readUInt32LE(offset + 4);
    const body = offset + 8;
    if (id === 'fmt ') {
      const format = buf.readUInt16LE(body);
      const channels = buf.readUInt16LE(body + 2);
      const rate = buf.readUInt32LE(body + 4);
      const bits = buf.readUInt16LE(body + 14);
      if (format !== 1 || channels !== 1 || rate !== SAMPLE_RATE || bits !== 16) {
        throw new AppError('prompt_invalid', `${name}: must be PCM mono 8000 Hz 16-bit (got format ${format}, ${channels} ch, ${rate} Hz, ${bits} bit)`);
      }
      fmtOk = true;
    } else if (id === 'data') {
      if (!fmtOk) throw new AppError('prompt_invalid', `${name}: data before fmt`);
      const end = Math.min(buf.length, body + size);
      const samples = new Int16Array(Math.floor((end - body) / 2));
      for (let i = 0; i < samples.length; i++) samples[i] = buf.readInt16LE(body + 2 * i);
      return samples;
    }
    offset = body + size + (size % 2);
  }
  throw new AppError('prompt_invalid', `${name}: no data chunk`);
}

export class PromptLibrary {
  private readonly cache = new Map<string, Int16Array>();

  constructor(private readonly dir: string = DEFAULT_PROMPTS_DIR) {}

  /** Samples of one prompt; throws AppError('prompt_missing') when the file is not there. */
  get(language: PromptLanguage, name: string): Int16Array {
    const key = `${language}/${name}`;
    let pcm = this.cache.get(key);
    if (!pcm) {
      const file = join(this.dir, language, `${name}.wav`);
      let buf: Buffer;
      try {
        buf = readFileSync(file);
      } catch {
        throw new AppError('prompt_missing', `prompt ${key} not found at ${file} (run scripts/render-prompts.sh)`);
      }
      pcm = readWav(buf, file);
      this.cache.set(key, pcm);
    }
    return pcm;
  }

  /** Loads every prompt of every language now, so a missing file fails at boot, not on a call. */
  preload(): void {
    for (const lang of PROMPT_LANGUAGES) for (const name of ['intro', 'again', ...'0123456789']) this.get(lang, name);
  }

  /** The announcement as one PCM buffer. */
  render(announcement: Announcement): Int16Array {
    const parts = announcement.items.map((item) =>
      'prompt' in item ? this.get(announcement.language, item.prompt) : new Int16Array(Math.round((item.silenceMs * SAMPLE_RATE) / 1000)),
    );
    const out = new Int16Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  }
}
