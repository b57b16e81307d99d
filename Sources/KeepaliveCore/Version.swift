public enum KeepaliveVersion {
    public static let string = "0.1.0"
}
