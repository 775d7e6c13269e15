/* qemu_insncount.c - QEMU 7.2 TCG plugin (API v1): executed-instruction counter, from
 * ../shared/embedded/qemu_insncount.c, extended for tvm-qplugin's per-kernel costs.
 *
 *   -plugin file=libinsncount.so[,lo=A,hi=B][,ranges=FILE][,mark=ADDR][,out=FILE]
 *
 * total   : every executed instruction
 * lo/hi   : instructions executed inside [lo, hi) (one function)
 * ranges  : FILE has lines "lo hi" (hex or decimal): one count per range (per kernel function)
 * mark    : address of a marker function (qmodel_profile_mark); each time its first instruction
 *           executes, the running total is recorded: deltas between marks = cost per layer.
 * out     : result file (default stderr): "insns_total N", "insns_range N", "range I N", "mark N".
 *
 * The total is incremented inline at the start of each translated block, so a mark sees the
 * count up to and including its own block; every mark has the same offset, deltas are exact. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
typedef uint64_t qemu_plugin_id_t; struct qemu_plugin_tb; struct qemu_plugin_insn;
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };
enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS, QEMU_PLUGIN_CB_R_REGS, QEMU_PLUGIN_CB_RW_REGS };
typedef void (*qemu_plugin_vcpu_udata_cb_t)(unsigned int vcpu_index, void *userdata);
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t, void (*)(qemu_plugin_id_t, struct qemu_plugin_tb *));
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *, enum qemu_plugin_op, void *, uint64_t);
void qemu_plugin_register_vcpu_insn_exec_inline(struct qemu_plugin_insn *, enum qemu_plugin_op, void *, uint64_t);
void qemu_plugin_register_vcpu_insn_exec_cb(struct qemu_plugin_insn *, qemu_plugin_vcpu_udata_cb_t,
                                            enum qemu_plugin_cb_flags, void *);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *, size_t);
uint64_t qemu_plugin_insn_vaddr(const struct qemu_plugin_insn *);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t, void (*)(qemu_plugin_id_t, void *), void *);
__attribute__((visibility("default"))) int qemu_plugin_version = 1;

#define MAX_RANGES 4096
#define MAX_MARKS (1 << 20)
static uint64_t total, in_range, lo, hi, mark_addr;
static uint64_t r_lo[MAX_RANGES], r_hi[MAX_RANGES], r_cnt[MAX_RANGES];
static size_t n_ranges, n_marks;
static uint64_t *marks;
static const char *out;

static void on_mark(unsigned int vcpu, void *udata) {
  (void)vcpu; (void)udata;
  if (n_marks < MAX_MARKS) marks[n_marks++] = total;
}

static void tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
  (void)id;
  size_t n = qemu_plugin_tb_n_insns(tb);
  qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &total, n);
  for (size_t i = 0; i < n; i++) {
    struct qemu_plugin_insn *in = qemu_plugin_tb_get_insn(tb, i);
    uint64_t va = qemu_plugin_insn_vaddr(in);
    if (hi > lo && va >= lo && va < hi) qemu_plugin_register_vcpu_insn_exec_inline(in, QEMU_PLUGIN_INLINE_ADD_U64, &in_range, 1);
    for (size_t r = 0; r < n_ranges; r++)
      if (va >= r_lo[r] && va < r_hi[r]) qemu_plugin_register_vcpu_insn_exec_inline(in, QEMU_PLUGIN_INLINE_ADD_U64, &r_cnt[r], 1);
    if (mark_addr && va == mark_addr) qemu_plugin_register_vcpu_insn_exec_cb(in, on_mark, QEMU_PLUGIN_CB_NO_REGS, NULL);
  }
}

static void at_exit(qemu_plugin_id_t id, void *p) {
  (void)id; (void)p;
  FILE *f = out ? fopen(out, "w") : stderr;
  if (!f) return;
  fprintf(f, "insns_total %llu\ninsns_range %llu\n", (unsigned long long)total, (unsigned long long)in_range);
  for (size_t r = 0; r < n_ranges; r++) fprintf(f, "range %zu %llu\n", r, (unsigned long long)r_cnt[r]);
  for (size_t m = 0; m < n_marks; m++) fprintf(f, "mark %llu\n", (unsigned long long)marks[m]);
  if (f != stderr) fclose(f);
}

static void read_ranges(const char *path) {
  FILE *f = fopen(path, "r");
  if (!f) { fprintf(stderr, "insncount: cannot open ranges file %s\n", path); return; }
  char a[64], b[64];
  while (n_ranges < MAX_RANGES && fscanf(f, "%63s %63s", a, b) == 2) {
    r_lo[n_ranges] = strtoull(a, 0, 0); r_hi[n_ranges] = strtoull(b, 0, 0); n_ranges++;
  }
  fclose(f);
}

__attribute__((visibility("default")))
int qemu_plugin_install(qemu_plugin_id_t id, const void *info, int argc, char **argv) {
  (void)info;
  for (int i = 0; i < argc; i++) {
    if (!strncmp(argv[i], "lo=", 3)) lo = strtoull(argv[i] + 3, 0, 0);
    else if (!strncmp(argv[i], "hi=", 3)) hi = strtoull(argv[i] + 3, 0, 0);
    else if (!strncmp(argv[i], "out=", 4)) out = argv[i] + 4;
    else if (!strncmp(argv[i], "ranges=", 7)) read_ranges(argv[i] + 7);
    else if (!strncmp(argv[i], "mark=", 5)) mark_addr = strtoull(argv[i] + 5, 0, 0);
  }
  if (mark_addr) marks = calloc(MAX_MARKS, sizeof *marks);
  if (mark_addr && !marks) return -1;
  qemu_plugin_register_vcpu_tb_trans_cb(id, tb_trans);
  qemu_plugin_register_atexit_cb(id, at_exit, NULL);
  return 0;
}
