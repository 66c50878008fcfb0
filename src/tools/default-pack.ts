/**
 * Which pack a command runs on when none is named: the demo pack, built on first use.
 *
 * The builder (the demo trainer, which runs onnxruntime-node) is imported only when the pack must
 * be built: a server whose pack is there never loads it on its HTTP thread.
 */
import { demoPackPresent } from '../demo/ensure.js';

export const DEFAULT_PACK_DIR = 'models/demo';

/** `dir` when given (loading reports what is wrong with it); else the demo pack, built if missing. */
export async function ensurePack(
  dir: string | undefined,
  log: (line: string) => void,
): Promise<string> {
  if (dir !== undefined) return dir;
  if (!(await demoPackPresent(DEFAULT_PACK_DIR))) {
    const { ensureDemoPack } = await import('../demo/build.js');
    await ensureDemoPack(DEFAULT_PACK_DIR, log);
  }
  return DEFAULT_PACK_DIR;
}
