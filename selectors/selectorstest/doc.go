// Package selectorstest draws random clusters and the packets to ask about
// them, for the property tests and fuzz targets that hold a compiled form of
// the policies (the selectors Model, the nft table) against the reference
// evaluator. Only tests import it.
package selectorstest
