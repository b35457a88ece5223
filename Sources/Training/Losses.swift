import Model
import TensorCore

/// Weights of the logit losses of one micro-batch.
///   L_kl = τ² · (1/(B·W)) Σ_{b,t} KL(softmax(zT/τ) ‖ softmax(zS/τ))   over every position
///   L_ce = (1/(B·(W-1))) Σ_{b, t<W-1} -log softmax(zS)[ids[b, t+1]]     (next-token cross-entropy)
///   L = kl · L_kl + ce · L_ce
/// The τ² factor (Hinton et al., 2015) keeps the gradient's size independent of τ.
public struct LogitLossWeights: Sendable {
    public var temperature: Float = 1
    public var kl: Float = 1
    public var ce: Float = 0
    public init(temperature: Float = 1, kl: Float = 1, ce: Float = 0) {
        self.temperature = temperature; self.kl = kl; self.ce = ce
    }
}

/// Values of the logit losses (unweighted), for reporting.
public struct LogitLossValues: Sendable {
    public var kl: Double = 0
    public var ce: Double = 0
}

/// The LM head and the logit losses, computed in chunks of rows so that only chunk × V logits exist at once
/// (V = 49152 for SmolLM2): for each chunk, student and teacher logits, the losses and d(logits), then
/// dHidden = d(logits) · LM head and d(LM head) += d(logits)ᵀ · hidden.
public final class LogitLoss {
    public let rowsPerChunk: Int
    let zs, zt, dz: Tensor
    var kl: [Double], nll: [Double]

    public init(vocab V: Int, rowsPerChunk R: Int = 256) {
        rowsPerChunk = R
        zs = Tensor(shape: [R, V]); zt = Tensor(shape: [R, V]); dz = Tensor(shape: [R, V])
        kl = [Double](repeating: 0, count: R)
        nll = [Double](repeating: 0, count: R)
    }

    /// Computes the losses of `student.hidden` against `teacher?.hidden` for the trainer's batch and writes
    /// dL/dhidden · `scale` into `dHidden` (rows, C); accumulates the LM head's gradient unless frozen.
    /// `scale` multiplies the whole loss (1/K for K accumulated micro-batches).
    public func compute(
        student: Trainer, teacher: (model: DecoderModel, hidden: Tensor)?, weights: LogitLossWeights, scale: Float,
        dHidden: Tensor
    ) -> LogitLossValues {
        let m = student.model, V = m.config.vocabSize, C = m.config.hiddenSize
        let N = student.rows, W = student.window, B = student.batch, R = rowsPerChunk
        precondition(teacher == nil || teacher!.model.config.vocabSize == V, "teacher and student vocabularies differ")
        let ids = student.ids
        let dLM = student.grads.pointers(student.grads.lmHeadID)
        let tau = weights.temperature
        let klScale = weights.kl * tau * tau / Float(N) * scale
        let ceScale = weights.ce / Float(B * (W - 1)) * scale
        var values = LogitLossValues()
        var r0 = 0
        while r0 < N {
            let rows = min(R, N - r0)
            let h = student.hidden.data + r0 * C
            m.lmHead.forward(out: zs.data, inp: h, rows: rows)
            dz.data.update(repeating: 0, count: rows * V)
            if let teacher, weights.kl != 0 {
                let Ct = teacher.model.config.hiddenSize
                teacher.model.lmHead.forward(out: zt.data, inp: teacher.hidden.data + r0 * Ct, rows: rows)
                kl.withUnsafeMutableBufferPointer { klp in
                    klDivergenceBackward(dlogits: dz.data, kl: klp.baseAddress!, student: zs.data, teacher: zt.data,
                                         temperature: tau, scale: klScale, rows: rows, columns: V)
                }
                for i in 0..<rows { values.kl += kl[i] }
            }
            if weights.ce != 0 {
                // Rows whose next token lies in the same window: every row but each window's last.
                var i = r0
                while i < r0 + rows {
                    let end = min(r0 + rows, (i / W + 1) * W - 1)
                    if i < end {
                        ids.withUnsafeBufferPointer { idp in
                            nll.withUnsafeMutableBufferPointer { np in
                                crossEntropyBackward(dlogits: dz.data + (i - r0) * V, nll: np.baseAddress!,
                                                     logits: zs.data + (i - r0) * V,
                                                     targets: idp.baseAddress! + i + 1, scale: ceScale, rows: end - i,
                                                     columns: V)
                            }
                        }
                        for j in 0..<(end - i) { values.ce += nll[j] }
                    }
                    i = (i / W + 1) * W
                }
            }
            // dHidden[chunk] = dz (rows, V) · LM head (V, C);  dLM (V, C) += dzᵀ · hidden[chunk]
            (dHidden.data + r0 * C).update(repeating: 0, count: rows * C)
            m.lmHead.backward(dinp: dHidden.data + r0 * C, grads: dLM, dout: dz.data, inp: h, rows: rows)
            r0 += rows
        }
        values.kl = values.kl * Double(tau * tau) / Double(N)
        values.ce /= Double(B * (W - 1))
        return values
    }
}
