// SPDX-License-Identifier: MIT
import CLibBPF
import Glibc

/// An address block a rule matches remote addresses against. Kept as 16
/// bytes and a prefix in that space: an IPv4 block is its v4-mapped form
/// (::ffff:a.b.c.d/96+n), as the BPF program sees IPv4 peers and the
/// v4-mapped peers of IPv6 sockets alike.
public struct CIDR: Hashable, Sendable, CustomStringConvertible {
    /// The network, host bits zero.
    public let network: [UInt8]
    /// The prefix length in the 128-bit space.
    public let prefix: Int
    public let isIPv4: Bool

    private static let mappedPrefix: [UInt8] = Array(repeating: 0, count: 10) + [0xff, 0xff]

    /// "10.20.0.0/16", "fd00:20::/32", or a single address (/32, /128). Host
    /// bits must be zero: "10.20.1.0/16" is a mistake, not a block.
    public init(parsing text: String) throws(RuleError) {
        let parts = text.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
        guard let (bytes, isIPv4) = Self.address(parts[0]) else {
            throw RuleError("'\(text)' is not an IPv4 or IPv6 address or CIDR")
        }
        let width = isIPv4 ? 32 : 128
        var length = width
        if parts.count == 2 {
            guard parts[1].utf8.allSatisfy({ (0x30...0x39).contains($0) }), let number = Int(parts[1]),
                (0...width).contains(number)
            else {
                throw RuleError("'\(text)': the prefix length must be 0..\(width)")
            }
            length = number
        }
        let prefix = isIPv4 ? 96 + length : length
        let network = Self.masked(bytes, prefix)
        guard network == bytes else {
            let shown = CIDR(network: network, prefix: prefix, isIPv4: isIPv4)
            throw RuleError("'\(text)' has host bits set (the block is \(shown))")
        }
        self.init(network: network, prefix: prefix, isIPv4: isIPv4)
    }

    init(network: [UInt8], prefix: Int, isIPv4: Bool) {
        self.network = network
        self.prefix = prefix
        self.isIPv4 = isIPv4
    }

    /// From the rule's record.
    init(_ encoded: ka_cidr) {
        let network = withUnsafeBytes(of: encoded.network) { Array($0) }
        let prefix = Int(encoded.prefix)
        self.init(network: network, prefix: prefix, isIPv4: prefix >= 96 && Self.isMapped(network))
    }

    /// One address (16 bytes, IPv4 v4-mapped) as a block of its own.
    init(address: [UInt8]) {
        self.init(network: address, prefix: 128, isIPv4: Self.isMapped(address))
    }

    private static func isMapped(_ bytes: [UInt8]) -> Bool { bytes.prefix(12).elementsEqual(mappedPrefix) }

    public var encoded: ka_cidr {
        var cidr = ka_cidr()
        withUnsafeMutableBytes(of: &cidr.network) { $0.copyBytes(from: network) }
        cidr.prefix = UInt8(prefix)
        return cidr
    }

    /// The addresses of the block as numbers (the 16 bytes big-endian).
    var addresses: ClosedRange<UInt128> {
        let first = network.reduce(UInt128(0)) { $0 << 8 | UInt128($1) }
        return first...(first | UInt128.max >> prefix)  // a smart shift: by 128 it leaves 0
    }

    /// Whether a remote address (16 bytes, IPv4 v4-mapped) is in the block.
    public func contains(_ address: [UInt8]) -> Bool {
        address.count == 16 && Self.masked(address, prefix) == network
    }

    public var description: String {
        if isIPv4 {
            return network.suffix(4).map(String.init).joined(separator: ".") + "/\(prefix - 96)"
        }
        var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        var raw = in6_addr()
        withUnsafeMutableBytes(of: &raw) { $0.copyBytes(from: network) }
        inet_ntop(AF_INET6, &raw, &text, socklen_t(text.count))
        return String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) + "/\(prefix)"
    }

    /// The network address alone: "10.20.0.1", "2001:db8::1".
    public var addressText: String { String(description.prefix { $0 != "/" }) }

    /// An address as 16 bytes (IPv4 v4-mapped), or nil.
    static func address(_ text: String) -> ([UInt8], Bool)? {
        var v4 = in_addr()
        var v6 = in6_addr()
        if inet_pton(AF_INET, text, &v4) == 1 {
            return (mappedPrefix + withUnsafeBytes(of: v4) { Array($0) }, true)
        }
        if inet_pton(AF_INET6, text, &v6) == 1 {
            return (withUnsafeBytes(of: v6) { Array($0) }, false)
        }
        return nil
    }

    static func mask(_ prefix: Int) -> [UInt8] {
        (0..<16).map { byte in
            let bits = min(max(prefix - byte * 8, 0), 8)
            return bits == 0 ? 0 : UInt8(truncatingIfNeeded: 0xff << (8 - bits))
        }
    }

    static func masked(_ bytes: [UInt8], _ prefix: Int) -> [UInt8] {
        zip(bytes, mask(prefix)).map { $0 & $1 }
    }
}
