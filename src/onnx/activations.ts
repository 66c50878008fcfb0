/**
 * Non-linearities by the names Hugging Face (hidden_act), AdapterHub (non_linearity) and our own
 * packs use, emitted as ONNX nodes. One home, so that every graph part spells them the same way.
 *   gelu                  x * 0.5 * (1 + erf(x / sqrt 2))            (exact; ORT fuses to Gelu)
 *   gelu_new, gelu_pytorch_tanh
 *                         0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))   (ORT fuses to FastGelu)
 *   quick_gelu            x * sigmoid(1.702 x)
 *   silu, swish           x * sigmoid(x)
 *   relu, tanh, identity, leakyrelu (slope 0.01, PyTorch's default)
 */
import type { GraphBuilder } from './graph.js';

export const ACTIVATION_NAMES = [
  'gelu',
  'gelu_new',
  'gelu_pytorch_tanh',
  'quick_gelu',
  'relu',
  'silu',
  'swish',
  'tanh',
  'identity',
  'leakyrelu',
] as const;
export type ActivationName = (typeof ACTIVATION_NAMES)[number];

export function isActivationName(value: string): value is ActivationName {
  return (ACTIVATION_NAMES as readonly string[]).includes(value);
}

/** act(x), elementwise; returns x itself for identity. */
export function emitActivation(
  g: GraphBuilder,
  act: ActivationName,
  x: string,
  name: string,
): string {
  switch (act) {
    case 'gelu':
      return g.geluErf(x, name);
    case 'gelu_new':
    case 'gelu_pytorch_tanh': {
      const cube = g.mul(g.mul(x, x, `${name}_sq`), x, `${name}_cube`);
      const inner = g.mul(
        g.add(x, g.mul(cube, g.constFloat(0.044715), `${name}_cube_scaled`), `${name}_inner_sum`),
        g.constFloat(Math.sqrt(2 / Math.PI)),
        `${name}_inner`,
      );
      const onePlus = g.add(
        g.op('Tanh', [inner], {}, `${name}_tanh`),
        g.constFloat(1),
        `${name}_add`,
      );
      return g.mul(g.mul(x, onePlus, `${name}_mul`), g.constFloat(0.5), `${name}_half`);
    }
    case 'quick_gelu':
      return g.mul(
        x,
        g.op('Sigmoid', [g.mul(x, g.constFloat(1.702), `${name}_scaled`)], {}, `${name}_sigmoid`),
        name,
      );
    case 'silu':
    case 'swish':
      return g.mul(x, g.op('Sigmoid', [x], {}, `${name}_sigmoid`), name);
    case 'relu':
      return g.op('Relu', [x], {}, name);
    case 'tanh':
      return g.op('Tanh', [x], {}, name);
    case 'leakyrelu':
      return g.op('LeakyRelu', [x], {}, name);
    case 'identity':
      return x;
  }
}
