// SPDX-License-Identifier: MIT
import Foundation
import Glibc
import KeepaliveCore

/// A value as JSON has it; `text` is how a table shows it.
enum JSONValue: Encodable, Sendable {
    case string(String)
    case integer(Int64)
    case unsigned(UInt64)
    case bool(Bool)
    case null
    case list([JSONValue])
    case object(Row)

    func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .string(let value): try container.encode(value)
        case .integer(let value): try container.encode(value)
        case .unsigned(let value): try container.encode(value)
        case .bool(let value): try container.encode(value)
        case .null: try container.encodeNil()
        case .list(let values): try container.encode(values)
        case .object(let row): try container.encode(row)
        }
    }

    /// A wall-clock time (seconds since the epoch) as every command prints one:
    /// ISO 8601 in UTC, to the millisecond.
    static func time(_ secondsSinceEpoch: Double) -> JSONValue {
        .string(
            Date(timeIntervalSince1970: secondsSinceEpoch).ISO8601Format(
                .iso8601(timeZone: .gmt, includingFractionalSeconds: true)
            )
        )
    }

    var text: String {
        switch self {
        case .string(let value): value
        case .integer(let value): "\(value)"
        case .unsigned(let value): "\(value)"
        case .bool(let value): value ? "yes" : "no"
        case .null: "-"
        case .list(let values): values.map(\.text).joined(separator: ",")
        case .object(let row): row.fields.map { "\($0.key)=\($0.text)" }.joined(separator: " ")
        }
    }
}

/// One field of an output row: its JSON key, its table column (nil: JSON
/// only), its value, and how the table shows it when not as the value.
struct Field: Sendable {
    let key: String
    let column: String?
    let value: JSONValue
    let shown: String?

    /// How a table shows it.
    var text: String { shown ?? value.text }

    init(_ key: String, _ column: String?, _ value: JSONValue, shown: String? = nil) {
        self.key = key
        self.column = column
        self.value = value
        self.shown = shown
    }
}

/// A row of a command's output: the same fields make its table line and its
/// JSON object (bpftool's discipline: one model, two printers).
struct Row: Encodable, Sendable {
    let fields: [Field]

    private struct Key: CodingKey {
        let stringValue: String
        init(stringValue: String) { self.stringValue = stringValue }
        var intValue: Int? { nil }
        init?(intValue: Int) { nil }
    }

    func encode(to encoder: Encoder) throws {
        var container = encoder.container(keyedBy: Key.self)
        for field in fields { try container.encode(field.value, forKey: Key(stringValue: field.key)) }
    }
}

/// Prints rows as a table, columns padded to their widest cell.
func printTable(_ rows: [Row]) {
    guard let first = rows.first else { return }
    let columns = first.fields.indices.filter { first.fields[$0].column != nil }
    let cells =
        [columns.map { first.fields[$0].column! }]
        + rows.map { row in columns.map { row.fields[$0].text } }
    let widths = columns.indices.map { i in cells.map { $0[i].count }.max() ?? 0 }
    for line in cells {
        let padded = line.enumerated().map { i, cell in cell + String(repeating: " ", count: widths[i] - cell.count) }
        print(String(padded.joined(separator: "  ").reversed().drop { $0 == " " }.reversed()))
    }
}

/// Prints a value as JSON (keys sorted, slashes as they are), indented or on one line.
func printJSON(_ value: some Encodable, oneLine: Bool = false) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting =
        oneLine
        ? [.sortedKeys, .withoutEscapingSlashes]
        : [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    print(String(decoding: try encoder.encode(value), as: UTF8.self))
}

/// One line on stderr, written at once (not through stdout's buffer).
func printError(_ line: String) {
    let text = line + "\n"
    _ = text.withCString { write(STDERR_FILENO, $0, strlen($0)) }
}

extension Origin {
    /// Who a policy was set for, as every listing shows it: a WORKLOAD column
    /// ("pod shop/db-0"), and in JSON the runtime's names, null where unknown.
    var fields: [Field] {
        func value(_ text: String?) -> JSONValue { text.map(JSONValue.string) ?? .null }
        return [
            Field("workload", "WORKLOAD", value(display)),
            Field("namespace", nil, value(namespace)),
            Field("pod", nil, value(pod)),
            Field("container", nil, value(container)),
            Field("container_id", nil, value(containerID)),
        ]
    }
}

/// Commands that can print JSON: their errors are JSON too.
protocol JSONOutputCommand {
    var json: Bool { get }
}
