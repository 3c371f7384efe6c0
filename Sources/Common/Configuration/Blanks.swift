extension StringProtocol {
    /// The text without leading and trailing blanks: spaces, tabs and the other Unicode space separators, the
    /// characters of Foundation's `CharacterSet.whitespaces`. Written with the standard library alone: Foundation's
    /// `trimmingCharacters(in:)` bridges to NSString and CoreFoundation, whose code and tables would otherwise
    /// be paged in at every agent start for a few configuration values (BENCHMARKS.md, "Edge agent footprint").
    package func trimmingBlanks() -> String {
        let scalars = Substring(self).unicodeScalars
        guard let first = scalars.firstIndex(where: { !$0.isBlank }),
            let last = scalars.lastIndex(where: { !$0.isBlank })
        else { return "" }
        return String(Substring(scalars[first...last]))
    }
}

extension Unicode.Scalar {
    /// A space, a tab or another space separator (general category Zs).
    package var isBlank: Bool {
        self == " " || self == "\t" || (value > 0x7F && properties.generalCategory == .spaceSeparator)
    }
}
