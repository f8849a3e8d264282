//go:build !amd64

package source
