import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { groupFeeds, planItem, type RoutingView } from '../src/engine/routing.js';
import { ROUTE_BLOCKED } from '../src/onnx/pack-graph-contract.js';

const known = new Set(['en', 'de', 'fr']);
const view: RoutingView = {
  groups: [
    {
      id: 'language',
      gated: true,
      adapters: ['en', 'de', 'fr', 'xx'],
      gateKnows: (id) => known.has(id),
      defaultK: 2,
      defaultAdapter: undefined,
      defaultTopP: 1,
    },
    {
      id: 'task',
      gated: false,
      adapters: ['topic', 'sentiment'],
      gateKnows: () => false,
      defaultK: 1,
      defaultAdapter: 'topic',
      defaultTopP: 1,
    },
  ],
};

function code(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (error) {
    return (error as { code?: string }).code;
  }
  return undefined;
}

describe('planItem', () => {
  it('uses default k, lets the gate choose among the adapters it knows, the default adapter of an ungated group', () => {
    const [language, task] = planItem(view, {});
    assert.deepEqual(language, { mode: 'gate', k: 2, topP: 1, excluded: new Set() });
    assert.deepEqual(task, { mode: 'fixed', weights: [['topic', 1]] });
  });

  it('pins with weight 1, reaching an adapter the gate was not trained on', () => {
    const [language] = planItem(view, { pins: { language: 'xx' }, k: { language: 3 } });
    assert.deepEqual(language, { mode: 'fixed', weights: [['xx', 1]] });
  });

  it('takes explicit weights, dropping zero weights', () => {
    const [language, task] = planItem(view, {
      weights: { language: { en: 0.7, xx: 0.3, de: 0 }, task: { sentiment: 1 } },
    });
    assert.deepEqual(language, {
      mode: 'fixed',
      weights: [
        ['en', 0.7],
        ['xx', 0.3],
      ],
    });
    assert.deepEqual(task, { mode: 'fixed', weights: [['sentiment', 1]] });
  });

  it('excludes, and lowers k to the adapters the gate may still choose', () => {
    const [language] = planItem(view, { exclude: ['en', 'de'], k: { language: 3 } });
    assert.deepEqual(language, { mode: 'gate', k: 1, topP: 1, excluded: new Set(['en', 'de']) });
  });

  it('takes top-p per group', () => {
    const [language] = planItem(view, { topP: { language: 0.9 }, k: { language: 3 } });
    assert.equal(language?.mode === 'gate' && language.topP, 0.9);
  });

  it('rejects what cannot be routed, each with its own code', () => {
    assert.equal(
      code(() => planItem(view, { pins: { nope: 'en' } })),
      'ROUTING_UNKNOWN_GROUP',
    );
    assert.equal(
      code(() => planItem(view, { pins: { language: 'nope' } })),
      'ROUTING_UNKNOWN_ADAPTER',
    );
    assert.equal(
      code(() => planItem(view, { exclude: ['nope'] })),
      'ROUTING_UNKNOWN_ADAPTER',
    );
    assert.equal(
      code(() => planItem(view, { k: { language: 0 } })),
      'ROUTING_INVALID_K',
    );
    assert.equal(
      code(() => planItem(view, { k: { language: 5 } })),
      'ROUTING_INVALID_K',
    );
    assert.equal(
      code(() => planItem(view, { k: { language: 1.5 } })),
      'ROUTING_INVALID_K',
    );
    assert.equal(
      code(() => planItem(view, { exclude: ['en', 'de', 'fr'] })),
      'ROUTING_NO_ADAPTER_LEFT',
    );
    assert.equal(
      code(() => planItem(view, { pins: { language: 'en' }, exclude: ['en'] })),
      'ROUTING_NO_ADAPTER_LEFT',
    );
    assert.equal(
      code(() => planItem(view, { topP: { language: 0 } })),
      'ROUTING_INVALID_TOP_P',
    );
    assert.equal(
      code(() => planItem(view, { topP: { language: 1.2 } })),
      'ROUTING_INVALID_TOP_P',
    );
    assert.equal(
      code(() => planItem(view, { pins: { language: 'en' }, weights: { language: { de: 1 } } })),
      'ROUTING_CONFLICT',
    );
    for (const weights of <Record<string, number>[]>[
      { en: 0.5, de: 0.4 },
      { en: -0.5, de: 1.5 },
      { en: 0 },
      { en: Number.NaN },
    ]) {
      assert.equal(
        code(() => planItem(view, { weights: { language: weights } })),
        'ROUTING_INVALID_WEIGHTS',
        JSON.stringify(weights),
      );
    }
    const noDefault: RoutingView = { groups: [{ ...view.groups[1]!, defaultAdapter: undefined }] };
    assert.equal(
      code(() => planItem(noDefault, {})),
      'ROUTING_PIN_REQUIRED',
    );
  });
});

describe('groupFeeds', () => {
  it('fixed mixtures are ln(weight) on their slots; gate items open the slots the gate may choose', () => {
    const slots = ['fr', undefined, 'xx', 'en', 'de'];
    const slotOf = (id: string) => slots.indexOf(id);
    const gateSlots = slots.flatMap((id, slot) =>
      id !== undefined && known.has(id) ? [{ slot, id }] : [],
    );
    const feeds = groupFeeds(
      [
        {
          mode: 'fixed',
          weights: [
            ['xx', 0.25],
            ['en', 0.75],
          ],
        },
        { mode: 'gate', k: 2, topP: 0.8, excluded: new Set(['de']) },
      ],
      5,
      slotOf,
      gateSlots,
    );
    const B = ROUTE_BLOCKED;
    assert.deepEqual(
      [...feeds.bias.slice(0, 5)],
      [B, B, Math.fround(Math.log(0.25)), Math.fround(Math.log(0.75)), B],
    );
    assert.deepEqual([...feeds.bias.slice(5)], [0, B, B, 0, B]);
    assert.deepEqual([...feeds.gateScale], [0, 1]);
    assert.deepEqual([...feeds.k], [2n, 2n]);
    assert.deepEqual([...feeds.topP], [1, Math.fround(0.8)]);
    assert.equal(feeds.kmax, 2);
  });
});
