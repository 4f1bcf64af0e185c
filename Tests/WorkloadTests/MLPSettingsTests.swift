import Testing

@testable import Workload

@Suite("Perceptron settings from a job spec")
struct MLPSettingsTests {
    @Test func test_noKeys_giveTheDefaults() throws {
        let settings = try MLPSettings(parameters: [:], seed: 9)
        #expect(
            settings
                == MLPSettings(
                    hidden: [128], optimizer: .sgd(learningRate: 0.1, momentum: 0.9), weightDecay: 0, seed: 9))
    }

    @Test(arguments: [
        ("128", [128]), ("128,64", [128, 64]), ("[128, 64]", [128, 64]), (" [ 16 ] ", [16]), ("[]", []), ("", []),
    ])
    func test_hidden_acceptsTheWrittenForms(text: String, widths: [Int]) throws {
        #expect(try MLPSettings(parameters: ["hidden": text], seed: 0).hidden == widths)
    }

    @Test func test_everyKey_isRead() throws {
        let sgd = try MLPSettings(
            parameters: [
                "optimizer": "sgd", "learning_rate": "0.05", "momentum": "0", "weight_decay": "1e-4", "hidden": "32",
            ],
            seed: 1
        )
        #expect(
            sgd
                == MLPSettings(
                    hidden: [32], optimizer: .sgd(learningRate: 0.05, momentum: 0), weightDecay: 1e-4, seed: 1))
        let adam = try MLPSettings(
            parameters: [
                "optimizer": "adam", "learning_rate": "0.002", "beta1": "0.8", "beta2": "0.99", "epsilon": "1e-6",
            ],
            seed: 2
        )
        #expect(adam.optimizer == .adam(learningRate: 0.002, beta1: 0.8, beta2: 0.99, epsilon: 1e-6))
        #expect(
            try MLPSettings(parameters: ["optimizer": "adam"], seed: 0).optimizer
                == .adam(learningRate: 0.001, beta1: 0.9, beta2: 0.999, epsilon: 1e-8))
    }

    @Test(arguments: [
        (["lr": "0.1"], ["`lr`", "accepted keys are beta1, beta2, epsilon, hidden, learning_rate"]),
        (["hidden": "abc"], ["`hidden`", "\"abc\"", "positive layer widths"]),
        (["hidden": "128,0"], ["`hidden`", "\"128,0\""]),
        (["hidden": "128,,64"], ["`hidden`"]),
        (["optimizer": "rmsprop"], ["`optimizer`", "\"rmsprop\"", "sgd or adam"]),
        (["learning_rate": "-1"], ["`learning_rate`", "\"-1\"", "positive number"]),
        (["learning_rate": "fast"], ["`learning_rate`", "\"fast\""]),
        (["learning_rate": "nan"], ["`learning_rate`", "\"nan\""]),
        (["momentum": "1.5"], ["`momentum`", "\"1.5\"", "0 ..< 1"]),
        (["weight_decay": "-0.1"], ["`weight_decay`", "\"-0.1\"", ">= 0"]),
        (["optimizer": "adam", "momentum": "0.9"], ["`momentum`", "only to optimizer sgd"]),
        (["beta2": "0.99"], ["`beta2`", "only to optimizer adam"]),
        (["optimizer": "adam", "beta1": "1"], ["`beta1`", "\"1\"", "0 ..< 1"]),
        (["optimizer": "adam", "epsilon": "0"], ["`epsilon`", "\"0\"", "positive"]),
    ])
    func test_badSettings_throw_namingTheKeyAndValue(parameters: [String: String], fragments: [String]) throws {
        let error = try #require(throws: WorkloadError.self) { try MLPSettings(parameters: parameters, seed: 0) }
        #expect(error.code == .invalidSetting)
        for fragment in fragments {
            #expect(error.description.contains(fragment), "\(error) lacks \(fragment)")
        }
    }
}
