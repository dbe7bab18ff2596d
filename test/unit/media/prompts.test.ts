import { describe, expect, it } from 'vitest';
import { codeAnnouncement, languageFor, PromptLibrary, SAMPLE_RATE } from '../../../src/media/prompts.js';

describe('language choice', () => {
  it('verification.languageByCountry on: the locale when given, else the destination country, else English', () => {
    expect(languageFor('de', 'FR', true)).toBe('de');
    expect(languageFor(undefined, 'FR', true)).toBe('fr');
    expect(languageFor(undefined, 'MX', true)).toBe('es');
    expect(languageFor(undefined, 'AR', true)).toBe('es');
    expect(languageFor(undefined, 'AT', true)).toBe('de');
    expect(languageFor(undefined, 'CH', true)).toBe('de');
    expect(languageFor(undefined, 'GB', true)).toBe('en');
    expect(languageFor(undefined, 'US', true)).toBe('en');
    expect(languageFor(null, 'JP', true)).toBe('en');
    expect(languageFor('xx', 'ES', true)).toBe('es');
  });

  it('off (the default, the contract\'s English text): the locale when given, else English whatever the country', () => {
    expect(languageFor('de', 'FR', false)).toBe('de');
    expect(languageFor(undefined, 'FR', false)).toBe('en');
    expect(languageFor(undefined, 'MX', false)).toBe('en');
    expect(languageFor('xx', 'ES', false)).toBe('en');
    expect(languageFor(null, 'GB', false)).toBe('en');
  });
});

describe('announcement', () => {
  it('is intro, the digits, "again", the digits, with silences between', () => {
    const a = codeAnnouncement('4829', 'en');
    const prompts = a.items.flatMap((i) => ('prompt' in i ? [i.prompt] : []));
    expect(prompts).toEqual(['intro', '4', '8', '2', '9', 'again', '4', '8', '2', '9']);
    expect(a.items.filter((i) => 'silenceMs' in i).length).toBe(1 + 3 + 1 + 1 + 3);
  });

  it('renders from the committed prompt files of every language', () => {
    const lib = new PromptLibrary();
    lib.preload();
    for (const lang of ['en', 'fr', 'es', 'de'] as const) {
      const intro = lib.get(lang, 'intro');
      expect(intro.length).toBeGreaterThan(SAMPLE_RATE / 2);
      expect(intro.length).toBeLessThan(SAMPLE_RATE * 4);
      const pcm = lib.render(codeAnnouncement('123456', lang));
      expect(pcm.length).toBeGreaterThan(intro.length);
      expect(pcm.length).toBeLessThan(SAMPLE_RATE * 20);
    }
  });
});
