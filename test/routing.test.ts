import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { routeItem, stackRouting } from '../src/engine/routing.js';
import { type MixtureLayout, ROUTE_BLOCKED, ROUTE_PINNED } from '../src/onnx/mixture-contract.js';

const layout: MixtureLayout = {
  version: 1,
  hiddenSize: 8,
  groups: [
    {
      id: 'language',
      adapters: ['en', 'de', 'fr', 'xx'],
      gated: true,
      gateKnows: [true, true, true, false],
      defaultK: 2,
      defaultAdapter: undefined,
    },
    {
      id: 'task',
      adapters: ['topic', 'sentiment'],
      gated: false,
      gateKnows: [false, false],
      defaultK: 1,
      defaultAdapter: 'topic',
    },
  ],
  heads: [],
};

function code(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (error) {
    return (error as { code?: string }).code;
  }
  return undefined;
}

describe('routeItem', () => {
  it('uses default k, blocks adapters the gate does not know, pins the default of an ungated group', () => {
    const [language, task] = routeItem(layout, {});
    assert.deepEqual([...language!.bias], [0, 0, 0, ROUTE_BLOCKED]);
    assert.equal(language!.k, 2);
    assert.deepEqual([...task!.bias], [ROUTE_PINNED, ROUTE_BLOCKED]);
    assert.equal(task!.k, 1);
  });

  it('pins with k = 1, reaching an adapter the gate was not trained on', () => {
    const [language] = routeItem(layout, { pins: { language: 'xx' }, k: { language: 3 } });
    assert.deepEqual(
      [...language!.bias],
      [ROUTE_BLOCKED, ROUTE_BLOCKED, ROUTE_BLOCKED, ROUTE_PINNED],
    );
    assert.equal(language!.k, 1);
  });

  it('excludes and lowers k to the adapters left', () => {
    const [language] = routeItem(layout, { exclude: ['en', 'de'], k: { language: 3 } });
    assert.deepEqual([...language!.bias], [ROUTE_BLOCKED, ROUTE_BLOCKED, 0, ROUTE_BLOCKED]);
    assert.equal(language!.k, 1);
  });

  it('rejects bad requests with stable codes', () => {
    assert.equal(
      code(() => routeItem(layout, { k: { language: 0 } })),
      'ROUTING_INVALID_K',
    );
    assert.equal(
      code(() => routeItem(layout, { k: { language: 5 } })),
      'ROUTING_INVALID_K',
    );
    assert.equal(
      code(() => routeItem(layout, { k: { language: 1.5 } })),
      'ROUTING_INVALID_K',
    );
    assert.equal(
      code(() => routeItem(layout, { pins: { nope: 'en' } })),
      'ROUTING_UNKNOWN_GROUP',
    );
    assert.equal(
      code(() => routeItem(layout, { pins: { language: 'zz' } })),
      'ROUTING_UNKNOWN_ADAPTER',
    );
    assert.equal(
      code(() => routeItem(layout, { exclude: ['zz'] })),
      'ROUTING_UNKNOWN_ADAPTER',
    );
    assert.equal(
      code(() => routeItem(layout, { exclude: ['en', 'de', 'fr'] })),
      'ROUTING_NO_ADAPTER_LEFT',
    );
    assert.equal(
      code(() => routeItem(layout, { pins: { language: 'en' }, exclude: ['en'] })),
      'ROUTING_NO_ADAPTER_LEFT',
    );
    const noDefault: MixtureLayout = {
      ...layout,
      groups: [layout.groups[0]!, { ...layout.groups[1]!, defaultAdapter: undefined }],
    };
    assert.equal(
      code(() => routeItem(noDefault, {})),
      'ROUTING_PIN_REQUIRED',
    );
  });

  it('lists the valid choices in the error details', () => {
    try {
      routeItem(layout, { pins: { language: 'zz' } });
      assert.fail('expected an error');
    } catch (error) {
      assert.deepEqual((error as { details: { choices: string[] } }).details.choices, [
        'en',
        'de',
        'fr',
        'xx',
      ]);
    }
  });
});

describe('stackRouting', () => {
  it('stacks rows per group and takes kmax over the batch', () => {
    const items = [
      routeItem(layout, { k: { language: 1 } }),
      routeItem(layout, { k: { language: 3 } }),
    ];
    const [language, task] = stackRouting(layout, items);
    assert.equal(language!.bias.length, 8);
    assert.deepEqual([...language!.k], [1n, 3n]);
    assert.equal(language!.kmax, 3);
    assert.equal(task!.kmax, 1);
  });
});
