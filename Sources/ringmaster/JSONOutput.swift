import Foundation

/// `object` as one line of JSON with sorted keys, as every `--json` of the CLI prints it.
func jsonText(_ object: Any) throws -> String {
    String(decoding: try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]), as: UTF8.self)
}

/// Prints `object` as one line of JSON (see `jsonText`).
func printJSON(_ object: Any) throws {
    print(try jsonText(object))
}
