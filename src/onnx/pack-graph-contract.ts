/**
 * The tensor contract of a pack's graph: one ONNX graph per pack, run once per batch. It holds the
 * backbone (or takes an external backbone's hidden states), every adapter group with its gate, the
 * pooling and the task heads. Adapters are not in the graph: they sit in slot banks, graph inputs
 * that each engine worker owns and rewrites when an adapter is loaded, so loading never recompiles.
 * The compiler (pack-graph.ts) names tensors by these functions; the engine feeds and reads them.
 *
 * Inputs (B items, T tokens, S slots of group i)
 *   input_ids          int64   [B,T]   when the backbone is in the graph (padding = pad token id)
 *   hidden             float32 [B,T,d] instead, when an external ONNX backbone ran first
 *   attention_mask     int64   [B,T]   1 for real tokens, 0 for padding
 *   g{i}_bias          float32 [B,S]   added to the routing scores: ROUTE_BLOCKED keeps a slot out
 *   g{i}_gate_scale    float32 [B]     1: the gate's logits count (gate routing); 0: they do not
 *                                      (pins and explicit weights, carried by the bias alone)
 *   g{i}_k             int64   [B]     most experts mixed for each item, 1 <= k <= kmax
 *   g{i}_kmax          int64   [1]     TopK width for the batch, max over items of k, <= S
 *   g{i}_top_p         float32 [B]     top-p: stop adding experts once the chosen ones' gate
 *                                      probability reaches p (1: always k)
 *   g{i}.<bank>        banks   [rows, ...]   slot banks (see BankSpec), fed as they are
 *
 * Routing of group i, per item:
 *   gate_logits [B,S] = the gate's logit of the adapter in each slot (0 where the gate does not
 *                       know it: bank g{i}.gate_index maps slot -> gate column, E_gate = none)
 *   scores = gate_scale * gate_logits + bias
 *   top    = TopK(scores, kmax), sorted;  p = softmax(scores) over the slots
 *   k_used = min(k, 1 + #{j : cumsum(p[top])_j < top_p})
 *   weights = softmax(scores[top]) over the first k_used, exactly 0 after them
 * so a pin is bias 0 on its slot and BLOCKED elsewhere with k 1, and explicit weights w are bias
 * ln(w) on their slots with k = their count (softmax(ln w) = w when the weights sum to 1).
 *
 * Outputs
 *   g{i}_experts   int64   [B,kmax]  slot indices, best first
 *   g{i}_weights   float32 [B,kmax]  mixing weights; 0 after k_used
 *   g{i}_k_used    int64   [B]       experts really mixed per item
 *   g{i}_entropy   float32 [B]       gated groups only: entropy (nats) of the gate's own softmax
 *                                    over all its experts, before any request bias
 *   g{i}_margin    float32 [B]       gated groups only: top-1 minus top-2 probability of it
 *   embedding      float32 [B,d]     the pooled final state, L2-normalised when the pack says so
 *   h{j}_scores    float32 [B,L_j]   softmax of head j's logits
 */

export const GRAPH_INPUT_IDS = 'input_ids';
export const GRAPH_INPUT_HIDDEN = 'hidden';
export const GRAPH_INPUT_MASK = 'attention_mask';
export const GRAPH_OUTPUT_EMBEDDING = 'embedding';

export const groupBiasName = (i: number) => `g${i}_bias`;
export const groupGateScaleName = (i: number) => `g${i}_gate_scale`;
export const groupKName = (i: number) => `g${i}_k`;
export const groupKmaxName = (i: number) => `g${i}_kmax`;
export const groupTopPName = (i: number) => `g${i}_top_p`;
export const groupExpertsName = (i: number) => `g${i}_experts`;
export const groupWeightsName = (i: number) => `g${i}_weights`;
export const groupKUsedName = (i: number) => `g${i}_k_used`;
export const groupEntropyName = (i: number) => `g${i}_entropy`;
export const groupMarginName = (i: number) => `g${i}_margin`;
export const headScoresName = (j: number) => `h${j}_scores`;
/** Slot bank `part` of group i at `site` (e.g. g0.top.up, g1.query.lora_a, g0.gate.index). */
export const bankName = (i: number, site: string, part: string) => `g${i}.${site}.${part}`;

/** Bias that keeps a slot out of the top-k (excluded, empty, or not gate-routable). */
export const ROUTE_BLOCKED = -1e9;

/**
 * One slot bank: a graph input the engine worker allocates (zero-filled) and owns. Row r holds
 * slot r % S of layer position floor(r / S): `rows` is S for banks without layers, L*S for
 * in-layer banks (L = the layers the group adapts). A slot write replaces whole rows.
 */
export interface BankSpec {
  readonly name: string;
  readonly dtype: 'float32' | 'int64';
  readonly rows: number;
  /** Shape of one row; the input's shape is [rows, ...rowShape]. */
  readonly rowShape: readonly number[];
}

/** Elements in one row of a bank. */
export function rowSize(bank: BankSpec): number {
  return bank.rowShape.reduce((a, b) => a * b, 1);
}
