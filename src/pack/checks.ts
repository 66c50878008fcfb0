/**
 * Checks shared by the pack's file readers: a safetensors file that must hold exactly the named
 * tensors, and a tensor's shape. Each failure is a PackError naming file and field. (JSON files:
 * readJsonFile in import/common.ts.)
 */
import { PackError } from './errors.js';
import { readSafetensors, type SafeTensor } from './safetensors.js';

/** Read a safetensors file that must hold exactly the named tensors. */
export async function readTensors(file: string, names: string[]): Promise<Map<string, SafeTensor>> {
  const tensors = await readSafetensors(file);
  for (const name of names) {
    if (!tensors.has(name)) {
      throw new PackError(
        'PACK_MISSING_TENSOR',
        file,
        name,
        `tensor not found; the file must hold ${names.join(', ')} (has ${[...tensors.keys()].join(', ') || 'none'})`,
      );
    }
  }
  for (const name of tensors.keys()) {
    if (!names.includes(name)) {
      throw new PackError(
        'PACK_UNEXPECTED_TENSOR',
        file,
        name,
        `unexpected tensor; the file must hold exactly ${names.join(', ')}`,
      );
    }
  }
  return tensors;
}

export function expectShape(
  file: string,
  name: string,
  tensor: SafeTensor,
  shape: number[],
  meaning: string,
): SafeTensor {
  const ok = tensor.shape.length === shape.length && tensor.shape.every((n, i) => n === shape[i]);
  if (!ok) {
    throw new PackError(
      'PACK_SHAPE_MISMATCH',
      file,
      name,
      `shape [${tensor.shape.join(',')}] must be ${meaning} = [${shape.join(',')}] (math layout, x @ W)`,
    );
  }
  return tensor;
}
