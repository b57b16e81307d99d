// SPDX-License-Identifier: MIT
public enum KeepaliveVersion {
    /// The release, from debian/changelog (Makefile: generated/Build.swift).
    public static let string = keepaliveVersion
}
