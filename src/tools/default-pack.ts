/**
 * Which pack a command runs on when none is named: the demo pack, built on first use.
 */
import { ensureDemoPack } from '../demo/build.js';

export const DEFAULT_PACK_DIR = 'models/demo';

/** `dir` when given (loading reports what is wrong with it); else the demo pack, built if missing. */
export async function ensurePack(
  dir: string | undefined,
  log: (line: string) => void,
): Promise<string> {
  if (dir !== undefined) return dir;
  await ensureDemoPack(DEFAULT_PACK_DIR, log);
  return DEFAULT_PACK_DIR;
}
