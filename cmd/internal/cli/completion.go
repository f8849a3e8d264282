package cli

import (
	"context"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"
)

// Shell completion (cobra's `podvisor completion bash|zsh|fish|powershell`)
// knows the kinds and, from the live records, the names of objects: `podvisor
// get pod <TAB>` lists the pods of the namespace given with -n.

// completeKindAndName completes `VERB KIND NAME...`.
func completeKindAndName(g *globals) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
		if len(args) == 0 {
			var kinds []string
			for _, r := range resources {
				kinds = append(kinds, r.names[0], r.names[1])
			}
			sort.Strings(kinds)
			return kinds, cobra.ShellCompDirectiveNoFileComp
		}
		return objectNames(cmd, g, args[0], toComplete), cobra.ShellCompDirectiveNoFileComp
	}
}

// completeNamesOf completes `VERB KIND NAME` where KIND is fixed by the
// verb's first argument (migrate pod NAME, drain host NAME).
func completeNamesOf(g *globals, kinds ...string) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
		if len(args) == 0 {
			return kinds, cobra.ShellCompDirectiveNoFileComp
		}
		if len(args) > 1 {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		return objectNames(cmd, g, args[0], toComplete), cobra.ShellCompDirectiveNoFileComp
	}
}

// objectNames reads the names of one kind's records (bounded to two
// seconds: completion must not hang a shell).
func objectNames(cmd *cobra.Command, g *globals, kind, prefix string) []string {
	res, ok := lookupResource(kind)
	if !ok {
		return nil
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), 2*time.Second)
	defer cancel()
	ns, _ := cmd.Flags().GetString("namespace")
	all, _ := cmd.Flags().GetBool("all-namespaces")
	keep := func(r record) bool {
		return strings.HasPrefix(r.Name(), prefix) && (!res.namespaced || all || ns == "" || r.Namespace() == ns)
	}
	var names []string
	if res.list != nil {
		recs, err := res.list(ctx, g)
		if err != nil {
			return nil
		}
		for _, r := range recs {
			if keep(r) {
				names = append(names, r.Name())
			}
		}
		sort.Strings(names)
		return names
	}
	b, err := g.connect(ctx)
	if err != nil {
		return nil
	}
	defer b.Close()
	kv, err := b.KV(ctx, res.bucket)
	if err != nil {
		return nil
	}
	w, err := kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return nil
	}
	defer w.Stop()
	for e := range w.Updates() {
		if e == nil {
			break
		}
		if res.skip != nil && res.skip(e.Key()) {
			continue
		}
		if r, err := res.decode(e.Value()); err == nil && keep(r) {
			names = append(names, r.Name())
		}
	}
	sort.Strings(names)
	return names
}

// completeName completes the single NAME argument of a verb whose kind is
// fixed (migrate pod NAME, trace pod NAME).
func completeName(g *globals, kind string) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
		if len(args) > 0 {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		return objectNames(cmd, g, kind, toComplete), cobra.ShellCompDirectiveNoFileComp
	}
}
