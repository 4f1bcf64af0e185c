/// How to build and train an ``MLPWorkload``: its hidden layers, its optimizer, and its seed.
public struct MLPSettings: Sendable, Hashable {
    /// The optimizer and its hyperparameters.
    public enum Optimizer: Sendable, Hashable {
        /// Stochastic gradient descent with momentum, PyTorch's convention:
        /// `v = momentum * v + g; p -= learningRate * v` (momentum 0 is plain SGD).
        case sgd(learningRate: Float = 0.1, momentum: Float = 0.9)
        /// Adam (Kingma and Ba, 2015) with bias correction, PyTorch's convention:
        /// `p -= learningRate / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + epsilon)`.
        case adam(learningRate: Float = 0.001, beta1: Float = 0.9, beta2: Float = 0.999, epsilon: Float = 1e-8)
    }

    /// Widths of the hidden layers, input side first; empty makes softmax regression (64 -> 10).
    public var hidden: [Int]
    /// The optimizer.
    public var optimizer: Optimizer
    /// L2 penalty added to every gradient as `weightDecay * p` (weights and biases, as PyTorch does); 0 turns it off.
    public var weightDecay: Float
    /// Seed of the initial weights: every process given the same seed starts bit-identical.
    public var seed: UInt64

    /// Settings from values.
    public init(
        hidden: [Int] = [128],
        optimizer: Optimizer = .sgd(learningRate: 0.1, momentum: 0.9),
        weightDecay: Float = 0,
        seed: UInt64
    ) {
        self.hidden = hidden
        self.optimizer = optimizer
        self.weightDecay = weightDecay
        self.seed = seed
    }

    /// The keys ``init(parameters:seed:)`` accepts.
    public static let acceptedKeys = [
        "beta1", "beta2", "epsilon", "hidden", "learning_rate", "momentum", "optimizer", "weight_decay",
    ]

    /// Widest hidden layer accepted from a job spec.
    public static let maximumWidth = 65_536

    /// Settings from a job spec's flat workload keys, all optional:
    /// `hidden` (`128`, `128,64` or `[128, 64]`; `[]` or empty for none), `optimizer` (`sgd` or `adam`),
    /// `learning_rate`, `momentum` (sgd only), `beta1`, `beta2`, `epsilon` (adam only) and
    /// `weight_decay`. Defaults: hidden [128], sgd with learning rate 0.1 and momentum 0.9
    /// (adam: 0.001, 0.9, 0.999, 1e-8), no weight decay.
    ///
    /// Throws ``WorkloadError/Code/invalidSetting`` naming the key, the value and what is accepted,
    /// for an unknown key, a value that does not parse or is out of range, or a key that belongs to
    /// the other optimizer.
    public init(parameters: [String: String], seed: UInt64) throws {
        for key in parameters.keys.sorted() where !Self.acceptedKeys.contains(key) {
            throw WorkloadError(
                .invalidSetting,
                "unknown workload setting `\(key)`; the accepted keys are \(Self.acceptedKeys.joined(separator: ", "))"
            )
        }
        var hidden = [128]
        if let text = parameters["hidden"] {
            hidden = try Self.parseWidths(text)
        }
        let optimizerName = parameters["optimizer"].map { $0.trimmingSpaces.lowercased() } ?? "sgd"
        let learningRate = try Self.number(parameters, "learning_rate", "a positive number, such as 0.1") { $0 > 0 }
        let weightDecay = try Self.number(parameters, "weight_decay", "a number >= 0, such as 0.0001") { $0 >= 0 } ?? 0
        let optimizer: Optimizer
        switch optimizerName {
        case "sgd":
            try Self.refuse(parameters, keys: ["beta1", "beta2", "epsilon"], optimizer: "adam")
            let momentum = try Self.number(parameters, "momentum", "a number in 0 ..< 1, such as 0.9") {
                $0 >= 0 && $0 < 1
            }
            optimizer = .sgd(learningRate: learningRate ?? 0.1, momentum: momentum ?? 0.9)
        case "adam":
            try Self.refuse(parameters, keys: ["momentum"], optimizer: "sgd")
            let beta1 = try Self.number(parameters, "beta1", "a number in 0 ..< 1, such as 0.9") { $0 >= 0 && $0 < 1 }
            let beta2 = try Self.number(parameters, "beta2", "a number in 0 ..< 1, such as 0.999") { $0 >= 0 && $0 < 1 }
            let epsilon = try Self.number(parameters, "epsilon", "a positive number, such as 1e-8") { $0 > 0 }
            optimizer = .adam(
                learningRate: learningRate ?? 0.001,
                beta1: beta1 ?? 0.9,
                beta2: beta2 ?? 0.999,
                epsilon: epsilon ?? 1e-8
            )
        default:
            throw WorkloadError(
                .invalidSetting,
                "workload setting `optimizer` = \"\(parameters["optimizer"] ?? "")\" is not accepted; expected sgd or adam"
            )
        }
        self.init(hidden: hidden, optimizer: optimizer, weightDecay: weightDecay, seed: seed)
    }

    // MARK: - Parsing helpers

    static func parseWidths(_ text: String) throws -> [Int] {
        var body = text.trimmingSpaces
        let accepted = "positive layer widths up to \(Self.maximumWidth), such as 128, \"128,64\" or [128, 64]"
        if body.hasPrefix("[") && body.hasSuffix("]") && body.count >= 2 {
            body = String(body.dropFirst().dropLast()).trimmingSpaces
        }
        if body.isEmpty { return [] }
        let parts = body.split(separator: ",", omittingEmptySubsequences: false).map { String($0).trimmingSpaces }
        var widths: [Int] = []
        for part in parts {
            guard let width = Int(part), width > 0, width <= Self.maximumWidth else {
                throw WorkloadError(
                    .invalidSetting, "workload setting `hidden` = \"\(text)\" is not accepted; expected \(accepted)")
            }
            widths.append(width)
        }
        return widths
    }

    static func number(
        _ parameters: [String: String],
        _ key: String,
        _ accepted: String,
        _ isValid: (Float) -> Bool
    ) throws -> Float? {
        guard let text = parameters[key] else { return nil }
        guard let value = Float(text.trimmingSpaces), value.isFinite, isValid(value) else {
            throw WorkloadError(
                .invalidSetting, "workload setting `\(key)` = \"\(text)\" is not accepted; expected \(accepted)")
        }
        return value
    }

    static func refuse(_ parameters: [String: String], keys: [String], optimizer: String) throws {
        for key in keys {
            if let value = parameters[key] {
                throw WorkloadError(
                    .invalidSetting,
                    "workload setting `\(key)` = \"\(value)\" applies only to optimizer \(optimizer); remove it or set optimizer: \(optimizer)"
                )
            }
        }
    }
}

extension String {
    /// The string without leading and trailing spaces and tabs.
    fileprivate var trimmingSpaces: String {
        var view = Substring(self)
        while let first = view.first, first == " " || first == "\t" { view.removeFirst() }
        while let last = view.last, last == " " || last == "\t" { view.removeLast() }
        return String(view)
    }
}
