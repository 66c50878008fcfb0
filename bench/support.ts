/**
 * What the benchmarks share: the sentences they send, and the statistics they report.
 */

/** Realistic sentences (about 20-45 tokens with the demo tokenizer) in several languages. */
export const SENTENCES: readonly string[] = [
  'Everyone has the right to education, and elementary education shall be free.',
  'The committee will meet next Tuesday to review the budget for this year.',
  'After three days of rain the river rose and flooded the lower town.',
  'She finished the report late at night and sent it to her manager.',
  'No one shall be subjected to arbitrary arrest, detention or exile.',
  'The new train line connects the airport with the city centre in twenty minutes.',
  'Our customers asked for faster delivery, so we opened a second warehouse.',
  'The team won the match last night, and the fans were very happy.',
  'Jeder hat das Recht auf Bildung, und der Unterricht muss unentgeltlich sein.',
  'Die Regierung hat am Montag neue Regeln für den Verkehr vorgestellt.',
  'Nach dem langen Winter freuen sich alle auf die ersten warmen Tage.',
  'Das Wetter ist heute gut, und der Markt in der Stadt ist offen.',
  "Toute personne a droit à l'éducation, et l'enseignement élémentaire est gratuit.",
  "Le conseil municipal va construire une nouvelle bibliothèque près de l'école.",
  'Nous avons pris le train de nuit pour arriver à Marseille tôt le matin.',
  "L'équipe a gagné le match, et les supporters étaient heureux dans la rue.",
  'Toda persona tiene derecho a la educación, y la instrucción elemental es gratuita.',
  'El equipo local ganó el partido en los últimos minutos del juego.',
  'La empresa abrirá una nueva fábrica en el norte del país el próximo año.',
  'Каждый человек имеет право на образование, и оно должно быть бесплатным.',
  'Вчера вечером в центре города прошёл большой концерт для всех жителей.',
  'Ogni individuo ha diritto all’istruzione, che deve essere gratuita per tutti.',
  'Todos têm direito à educação, e a instrução elementar deve ser gratuita.',
  'Iedereen heeft recht op onderwijs, en het lager onderwijs moet kosteloos zijn.',
];

export const log = (line: string) => process.stderr.write(`${line}\n`);

export function positiveInt(name: string, raw: string): number {
  const value = Number(raw);
  if (!Number.isInteger(value) || value < 1)
    throw new Error(`--${name} must be a positive integer`);
  return value;
}

export function median(xs: readonly number[]): number {
  if (xs.length === 0) return Number.NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** Nearest-rank percentile, p in (0, 100]. */
export function percentile(xs: readonly number[], p: number): number {
  if (xs.length === 0) return Number.NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)]!;
}

export const round2 = (x: number) => Number(x.toFixed(2));
export const round3 = (x: number) => Number(x.toFixed(3));
