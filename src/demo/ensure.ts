/**
 * Making sure a built folder (the demo pack) is there, with one builder at a time: `npm start` and
 * `npm run worker` started together on one checkout both find `models/demo` missing, and must
 * not build into one staging folder (one deletes what the other writes).
 *
 *   1. Present already (its marker files are there): use it.
 *   2. Take the lock `<dir>.lock` (created exclusively, holding the owner's pid and host). Whoever
 *      does not get it waits, polling, until the folder is there (then uses the winner's) or the
 *      lock is gone or stale (then competes again).
 *   3. The lock holder checks again, builds into a staging folder of its own
 *      (`<dir>.staging-<pid>-<random>`), and moves it into place with one rename; a reader never
 *      sees half a folder, and two builders (after a stale-lock takeover) cannot mix their files.
 *
 * A lock is stale when its owner is gone: same host and no such process, or (another host sharing
 * the folder, e.g. containers on one volume) older than STALE_LOCK_MS. No heartbeat: the demo
 * trainer blocks its event loop for long stretches, which would make a live owner look dead.
 *
 * This module imports nothing heavy, so the API role can check for the pack without loading the
 * trainer or onnxruntime-node (it imports demo/build.ts only when a pack must be built).
 */
import { randomBytes } from 'node:crypto';
import { open, readFile, rename, rm, stat } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join, resolve } from 'node:path';
import { MANIFEST_FILE } from '../pack/manifest.js';

/** The build report, written last by the demo build; with the manifest it marks a finished pack. */
export const DEMO_REPORT_FILE = 'report.json';

/** A lock from another host older than this is taken over (a demo build takes ~2 minutes). */
export const STALE_LOCK_MS = 30 * 60_000;
const POLL_MS = 500;

/** The demo pack in `dir` is complete: manifest.json and report.json are there. */
export async function demoPackPresent(dir: string): Promise<boolean> {
  const isFile = (file: string) =>
    stat(join(dir, file)).then(
      (s) => s.isFile(),
      () => false,
    );
  return (await isFile(MANIFEST_FILE)) && (await isFile(DEMO_REPORT_FILE));
}

export interface BuildOnceOptions {
  /** Whether `dir` holds a finished build. */
  readonly present: (dir: string) => Promise<boolean>;
  /** Build into `staging` (a path that does not exist yet; the build creates it). */
  readonly build: (staging: string) => Promise<void>;
  /** Throws if `dir` holds something that must not be replaced (called before replacing it). */
  readonly assertReplaceable: (dir: string) => Promise<void>;
  readonly log: (line: string) => void;
}

/** Ensure `dir` holds a finished build; returns true when this process built it. */
export async function buildOnce(dir: string, options: BuildOnceOptions): Promise<boolean> {
  const target = resolve(dir);
  const lockPath = `${target}.lock`;
  let waiting = false;
  for (;;) {
    if (await options.present(target)) return false;
    const release = await tryLock(lockPath);
    if (release !== undefined) {
      try {
        if (await options.present(target)) return false; // finished while we took the lock
        await buildAndMove(target, options);
        return true;
      } finally {
        await release();
      }
    }
    if (!waiting) {
      waiting = true;
      options.log(`[demo] ${lockPath} is held: another process is building; waiting for it`);
    }
    await new Promise((done) => setTimeout(done, POLL_MS));
  }
}

async function buildAndMove(target: string, options: BuildOnceOptions): Promise<void> {
  const staging = `${target}.staging-${process.pid}-${randomBytes(4).toString('hex')}`;
  try {
    await options.build(staging);
    if (await options.present(target)) return; // another builder won after a takeover
    await options.assertReplaceable(target);
    await rm(target, { recursive: true, force: true });
    await rename(staging, target);
  } finally {
    await rm(staging, { recursive: true, force: true });
  }
}

interface LockOwner {
  readonly pid: number;
  readonly host: string;
}

/** The lock, with its release; undefined when a live owner holds it. */
async function tryLock(path: string): Promise<(() => Promise<void>) | undefined> {
  const owner: LockOwner = { pid: process.pid, host: hostname() };
  try {
    const file = await open(path, 'wx');
    await file.writeFile(JSON.stringify(owner));
    await file.close();
    return () => rm(path, { force: true });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
  }
  if (!(await lockIsStale(path))) return undefined;
  // Move the stale lock aside (atomic: of several waiters, one rename wins), then compete again.
  const aside = `${path}.stale-${process.pid}-${randomBytes(4).toString('hex')}`;
  await rename(path, aside).then(
    () => rm(aside, { force: true }),
    () => undefined,
  );
  return undefined;
}

async function lockIsStale(path: string): Promise<boolean> {
  let owner: Partial<LockOwner>;
  let age: number;
  try {
    const [text, info] = await Promise.all([readFile(path, 'utf8'), stat(path)]);
    age = Date.now() - info.mtimeMs;
    owner = text.length === 0 ? {} : (JSON.parse(text) as Partial<LockOwner>);
  } catch {
    return false; // gone (compete again at once) or being written
  }
  if (owner.host === hostname() && typeof owner.pid === 'number') return !processAlive(owner.pid);
  return age > STALE_LOCK_MS;
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM'; // alive, someone else's
  }
}
