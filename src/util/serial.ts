/**
 * Async work run one at a time, in the order it was asked for: each run starts once the one before
 * it has settled, and a run that fails does not stop the ones after it (its caller gets the
 * error). The adapter registry, the engine's adapter changes and the composition stores each keep
 * one, so that their changes never interleave.
 */
export class SerialQueue {
  private tail: Promise<unknown> = Promise.resolve();

  run<T>(work: () => Promise<T>): Promise<T> {
    const run = this.tail.then(work);
    this.tail = run.catch(() => undefined);
    return run;
  }

  /** Resolves once everything asked for so far has settled. */
  async idle(): Promise<void> {
    await this.tail;
  }
}
