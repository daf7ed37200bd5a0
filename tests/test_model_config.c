/* test_model_config.c - architecture metadata and the tensor list: a tiny DiT
 * and a tiny FPDM file (tensors built from model_config_tensor_specs, zeros)
 * are accepted, with shapes checked against the official models.py layout;
 * then each malformed metadata value and each missing / misshapen / extra /
 * integer tensor is rejected with a message naming it.
 * Run: ctest -R test_model_config. */
#define _POSIX_C_SOURCE 200809L

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model_config.h"
#include "safetensors.h"
#include "test_util.h"

static char temp_dir[64];
static char model_path[128];

typedef struct test_tensor {
    char name[96];
    const char *dtype;
    int ndim;
    int64_t shape[4];
} test_tensor;

/* ---- a tiny safetensors writer --------------------------------------------- */

typedef struct text {
    char *s;
    size_t len, cap;
} text;

static void append(text *t, const char *format, ...) __attribute__((format(printf, 2, 3)));

static void append(text *t, const char *format, ...) {
    for (;;) {
        va_list args;
        va_start(args, format);
        int n = vsnprintf(t->s + t->len, t->cap - t->len, format, args);
        va_end(args);
        if (n >= 0 && (size_t)n < t->cap - t->len) {
            t->len += (size_t)n;
            return;
        }
        t->cap = t->cap * 2 + (size_t)n + 64;
        t->s = realloc(t->s, t->cap);
        if (!t->s) exit(1);
    }
}

static size_t dtype_bytes(const char *dtype) {
    return !strcmp(dtype, "F32") || !strcmp(dtype, "I32") ? 4 : !strcmp(dtype, "I64") ? 8 : 2;
}

/* metadata: NULL-terminated key, value pairs. Data is all zeros. */
static void write_model(const char *const *metadata, const test_tensor *tensors, int count) {
    text header = {malloc(64), 0, 64};
    append(&header, "{\"__metadata__\":{");
    for (int i = 0; metadata[i]; i += 2)
        append(&header, "%s\"%s\":\"%s\"", i ? "," : "", metadata[i], metadata[i + 1]);
    append(&header, "}");
    uint64_t offset = 0;
    for (int i = 0; i < count; i++) {
        const test_tensor *t = &tensors[i];
        uint64_t elements = 1;
        append(&header, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[", t->name, t->dtype);
        for (int d = 0; d < t->ndim; d++) {
            append(&header, "%s%lld", d ? "," : "", (long long)t->shape[d]);
            elements *= (uint64_t)t->shape[d];
        }
        uint64_t end = offset + elements * dtype_bytes(t->dtype);
        append(&header, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)offset,
               (unsigned long long)end);
        offset = end;
    }
    append(&header, "}");
    FILE *f = fopen(model_path, "wb");
    if (!f) exit(1);
    uint8_t length[8];
    for (int i = 0; i < 8; i++) length[i] = (uint8_t)((uint64_t)header.len >> (8 * i));
    fwrite(length, 1, 8, f);
    fwrite(header.s, 1, header.len, f);
    for (uint64_t i = 0; i < offset; i++) fputc(0, f);
    fclose(f);
    free(header.s);
}

/* The tensors a config needs, as F32. *count receives how many. */
static test_tensor *tensors_for(const model_config *config, int *count) {
    int n = model_config_tensor_specs(config, NULL, 0);
    model_tensor_spec *specs = calloc((size_t)n, sizeof(*specs));
    test_tensor *tensors = calloc((size_t)n + 1, sizeof(*tensors)); /* room for one extra */
    if (!specs || !tensors) exit(1);
    CHECK(model_config_tensor_specs(config, specs, n) == n);
    for (int i = 0; i < n; i++) {
        memcpy(tensors[i].name, specs[i].name, sizeof(tensors[i].name));
        tensors[i].dtype = "F32";
        tensors[i].ndim = specs[i].ndim;
        memcpy(tensors[i].shape, specs[i].shape, sizeof(tensors[i].shape));
    }
    free(specs);
    *count = n;
    return tensors;
}

static test_tensor *find_test_tensor(test_tensor *tensors, int count, const char *name) {
    for (int i = 0; i < count; i++)
        if (!strcmp(tensors[i].name, name)) return &tensors[i];
    return NULL;
}

/* ---- metadata ----------------------------------------------------------------- */

static const char *const dit_metadata[] = {
    "fpdm.architecture", "dit", "fpdm.hidden_size", "24", "fpdm.num_heads", "2",
    "fpdm.patch_size", "2", "fpdm.input_size", "8", "fpdm.in_channels", "4",
    "fpdm.num_classes", "10", "fpdm.depth", "2", "format", "pt", NULL,
};

static const char *const fpdm_metadata[] = {
    "fpdm.architecture", "fpdm", "fpdm.hidden_size", "24", "fpdm.num_heads", "3",
    "fpdm.patch_size", "2", "fpdm.input_size", "8", "fpdm.in_channels", "1",
    "fpdm.num_classes", "10", "fpdm.pre_depth", "1", "fpdm.post_depth", "2",
    "fpdm.learn_sigma", "false", "fpdm.mlp_ratio", "2.5",
    "fpdm.pre_post_timestep_conditioning", "false", "fpdm.prediction", "v",
    "fpdm.zero_terminal_snr", "true", "fpdm.space", "pixel",
    "fpdm.noise_schedule", "squaredcos_cap_v2", "fpdm.num_train_timesteps", "500",
    "converter", "tools/convert.py", NULL,
};

/* A copy of base with key set to value (value NULL removes it; a key not in
 * base is appended). Two buffers take turns so that calls can nest. */
static const char **with_value(const char *const *base, const char *key, const char *value) {
    static const char *buffers[2][64];
    static int turn;
    const char **edited = buffers[turn ^= 1];
    int n = 0, found = 0;
    for (int i = 0; base[i]; i += 2) {
        if (!strcmp(base[i], key)) {
            found = 1;
            if (!value) continue;
            edited[n++] = key;
            edited[n++] = value;
        } else {
            edited[n++] = base[i];
            edited[n++] = base[i + 1];
        }
    }
    if (!found && value) {
        edited[n++] = key;
        edited[n++] = value;
    }
    edited[n] = NULL;
    return edited;
}

/* Opens model_path and parses its config; returns the config step's status. */
static int load_config(model_config *config, safetensors_file *file, char *err, size_t err_size) {
    if (safetensors_open(model_path, file, err, err_size) != 0) {
        fprintf(stderr, "writer produced an invalid file: %s\n", err);
        test_failures++;
        return -2;
    }
    return model_config_from_file(file, config, err, err_size);
}

static void expect_config_failure(const char *what, const char *const *metadata, const char *keyword) {
    write_model(metadata, NULL, 0);
    model_config config;
    safetensors_file file;
    char err[512];
    int rc = load_config(&config, &file, err, sizeof(err));
    CHECK_MSG(rc == -1, "%s: config accepted", what);
    CHECK_MSG(strncmp(err, model_path, strlen(model_path)) == 0, "%s: \"%s\" lacks the path", what, err);
    CHECK_MSG(strstr(err, keyword) != NULL, "%s: message \"%s\" lacks \"%s\"", what, err, keyword);
    safetensors_close(&file);
}

static void test_dit(void) {
    write_model(dit_metadata, NULL, 0);
    model_config c;
    safetensors_file file;
    char err[512];
    CHECK_MSG(load_config(&c, &file, err, sizeof(err)) == 0, "%s", err);
    safetensors_close(&file);
    CHECK(c.fixed_point == 0 && c.hidden_size == 24 && c.num_heads == 2 && c.head_dim == 12);
    CHECK(c.depth == 2 && c.patch_size == 2 && c.input_size == 8 && c.grid_size == 4 && c.num_tokens == 16);
    CHECK(c.in_channels == 4 && c.out_channels == 8 && c.learn_sigma == 1 && c.num_classes == 10);
    CHECK(c.mlp_hidden == 96);
    CHECK(c.prediction == FPDM_PREDICT_EPS && c.zero_terminal_snr == 0 && c.latent_space == 1);
    CHECK(c.noise_schedule == FPDM_SCHEDULE_LINEAR && c.num_train_timesteps == 1000);
    CHECK(c.unconditional == 0);

    /* Shapes as DiT's models.py builds them for these sizes. */
    int n;
    test_tensor *tensors = tensors_for(&c, &n);
    CHECK(n == 12 + 10 * 2);
    static const struct {
        const char *name;
        int ndim;
        int64_t shape[4];
    } expected[] = {
        {"x_embedder.proj.weight", 4, {24, 4, 2, 2}},
        {"x_embedder.proj.bias", 1, {24}},
        {"pos_embed", 3, {1, 16, 24}},
        {"t_embedder.mlp.0.weight", 2, {24, 256}},
        {"t_embedder.mlp.2.weight", 2, {24, 24}},
        {"y_embedder.embedding_table.weight", 2, {11, 24}},
        {"blocks.0.attn.qkv.weight", 2, {72, 24}},
        {"blocks.1.attn.qkv.bias", 1, {72}},
        {"blocks.1.attn.proj.weight", 2, {24, 24}},
        {"blocks.0.mlp.fc1.weight", 2, {96, 24}},
        {"blocks.0.mlp.fc1.bias", 1, {96}},
        {"blocks.1.mlp.fc2.weight", 2, {24, 96}},
        {"blocks.1.adaLN_modulation.1.weight", 2, {144, 24}},
        {"blocks.1.adaLN_modulation.1.bias", 1, {144}},
        {"final_layer.linear.weight", 2, {32, 24}},
        {"final_layer.linear.bias", 1, {32}},
        {"final_layer.adaLN_modulation.1.weight", 2, {48, 24}},
        {"final_layer.adaLN_modulation.1.bias", 1, {48}},
    };
    for (size_t i = 0; i < sizeof(expected) / sizeof(expected[0]); i++) {
        test_tensor *t = find_test_tensor(tensors, n, expected[i].name);
        CHECK_MSG(t != NULL, "no tensor %s in the spec list", expected[i].name);
        if (!t) continue;
        CHECK_MSG(t->ndim == expected[i].ndim &&
                      !memcmp(t->shape, expected[i].shape, (size_t)t->ndim * sizeof(int64_t)),
                  "%s has the wrong shape", expected[i].name);
    }
    CHECK(find_test_tensor(tensors, n, "blocks.2.attn.qkv.weight") == NULL);

    write_model(dit_metadata, tensors, n);
    CHECK(load_config(&c, &file, err, sizeof(err)) == 0);
    CHECK_MSG(model_config_check_tensors(&c, &file, err, sizeof(err)) == 0, "%s", err);
    safetensors_close(&file);

    /* Half-precision weights are fine too. */
    for (int i = 0; i < n; i++) tensors[i].dtype = i % 2 ? "F16" : "BF16";
    write_model(dit_metadata, tensors, n);
    CHECK(load_config(&c, &file, err, sizeof(err)) == 0);
    CHECK_MSG(model_config_check_tensors(&c, &file, err, sizeof(err)) == 0, "%s", err);
    safetensors_close(&file);
    free(tensors);
}

static void test_fpdm(void) {
    write_model(fpdm_metadata, NULL, 0);
    model_config c;
    safetensors_file file;
    char err[512];
    CHECK_MSG(load_config(&c, &file, err, sizeof(err)) == 0, "%s", err);
    safetensors_close(&file);
    CHECK(c.fixed_point == 1 && c.pre_depth == 1 && c.post_depth == 2 && c.depth == 4);
    CHECK(c.equivalent_depth == 28 && c.pre_post_timestep_conditioning == 0);
    CHECK(c.head_dim == 8 && c.mlp_hidden == 60 && c.in_channels == 1 && c.out_channels == 1);
    CHECK(c.learn_sigma == 0 && c.prediction == FPDM_PREDICT_V && c.zero_terminal_snr == 1);
    CHECK(c.latent_space == 0 && c.noise_schedule == FPDM_SCHEDULE_SQUAREDCOS_CAP_V2);
    CHECK(c.num_train_timesteps == 500);

    int n;
    test_tensor *tensors = tensors_for(&c, &n);
    CHECK(n == 12 + 10 * 1 + 6 + 10 + 10 * 2);
    static const struct {
        const char *name;
        int ndim;
        int64_t shape[4];
    } expected[] = {
        {"x_embedder.proj.weight", 4, {24, 1, 2, 2}},
        {"blocks_pre.0.attn.qkv.weight", 2, {72, 24}},
        {"blocks_pre.0.mlp.fc1.weight", 2, {60, 24}},
        {"block_pre_projection.weight", 2, {24, 24}},
        {"block_pre_projection.bias", 1, {24}},
        {"block_fixed_point_projection_fc1.weight", 2, {48, 48}},
        {"block_fixed_point_projection_fc1.bias", 1, {48}},
        {"block_fixed_point_projection_fc2.weight", 2, {24, 48}},
        {"block_fixed_point_projection_fc2.bias", 1, {24}},
        {"block_fixed_point.mlp.fc2.weight", 2, {24, 60}},
        {"block_fixed_point.adaLN_modulation.1.bias", 1, {144}},
        {"blocks_post.1.attn.proj.bias", 1, {24}},
        {"final_layer.linear.weight", 2, {4, 24}},
    };
    for (size_t i = 0; i < sizeof(expected) / sizeof(expected[0]); i++) {
        test_tensor *t = find_test_tensor(tensors, n, expected[i].name);
        CHECK_MSG(t != NULL, "no tensor %s in the spec list", expected[i].name);
        if (!t) continue;
        CHECK_MSG(t->ndim == expected[i].ndim &&
                      !memcmp(t->shape, expected[i].shape, (size_t)t->ndim * sizeof(int64_t)),
                  "%s has the wrong shape", expected[i].name);
    }
    for (int i = 0; i < n; i++) CHECK_MSG(strncmp(tensors[i].name, "blocks.", 7) != 0, "%s", tensors[i].name);

    write_model(fpdm_metadata, tensors, n);
    CHECK(load_config(&c, &file, err, sizeof(err)) == 0);
    CHECK_MSG(model_config_check_tensors(&c, &file, err, sizeof(err)) == 0, "%s", err);
    safetensors_close(&file);

    /* A stated fpdm.depth must agree with pre + 1 + post. */
    write_model(with_value(fpdm_metadata, "fpdm.depth", "4"), NULL, 0);
    CHECK(load_config(&c, &file, err, sizeof(err)) == 0 && c.depth == 4);
    safetensors_close(&file);
    expect_config_failure("fpdm depth mismatch", with_value(fpdm_metadata, "fpdm.depth", "5"), "fpdm.depth = 5");
    free(tensors);
}

/* Ratios as Python writes them (shortest round trip, up to 17 significant
 * digits, here in positional form) must give the reference's
 * int(hidden_size * ratio): 15 digits of 1/3 give 15, not 16, and dividing the
 * second's digits (past 2^53) by 10^17 in doubles gives 16, not 17. */
static void test_mlp_ratio(void) {
    static const struct {
        const char *hidden_size, *ratio;
        int mlp_hidden;
    } cases[] = {
        {"48", "0.3333333333333333", 16},
        {"44", "0.38636363636363635", 17},
        {"16380", "0.00006105006105006105", 1},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        write_model(with_value(with_value(dit_metadata, "fpdm.hidden_size", cases[i].hidden_size),
                               "fpdm.mlp_ratio", cases[i].ratio),
                    NULL, 0);
        model_config c;
        safetensors_file file;
        char err[512];
        CHECK_MSG(load_config(&c, &file, err, sizeof(err)) == 0, "%s", err);
        safetensors_close(&file);
        CHECK_MSG(c.mlp_hidden == cases[i].mlp_hidden, "hidden %s * ratio %s gave %d, expected %d",
                  cases[i].hidden_size, cases[i].ratio, c.mlp_hidden, cases[i].mlp_hidden);
    }
}

static void test_config_failures(void) {
    expect_config_failure("no architecture", with_value(dit_metadata, "fpdm.architecture", NULL),
                          "missing metadata key fpdm.architecture");
    expect_config_failure("bad architecture", with_value(dit_metadata, "fpdm.architecture", "unet"), "unet");
    expect_config_failure("missing hidden", with_value(dit_metadata, "fpdm.hidden_size", NULL),
                          "missing metadata key fpdm.hidden_size");
    expect_config_failure("missing depth", with_value(dit_metadata, "fpdm.depth", NULL), "fpdm.depth");
    expect_config_failure("fpdm missing pre_depth", with_value(fpdm_metadata, "fpdm.pre_depth", NULL),
                          "missing metadata key fpdm.pre_depth");
    expect_config_failure("12abc", with_value(dit_metadata, "fpdm.hidden_size", "12abc"), "\"12abc\"");
    expect_config_failure("negative", with_value(dit_metadata, "fpdm.num_heads", "-2"), "not a non-negative integer");
    expect_config_failure("plus sign", with_value(dit_metadata, "fpdm.num_heads", "+2"), "not a non-negative integer");
    expect_config_failure("space", with_value(dit_metadata, "fpdm.num_heads", " 2"), "not a non-negative integer");
    expect_config_failure("empty integer", with_value(dit_metadata, "fpdm.depth", ""), "fpdm.depth");
    expect_config_failure("overflow", with_value(dit_metadata, "fpdm.num_classes", "99999999999999999999"),
                          "not a non-negative integer");
    expect_config_failure("zero", with_value(dit_metadata, "fpdm.patch_size", "0"), "out of range");
    expect_config_failure("huge hidden", with_value(dit_metadata, "fpdm.hidden_size", "32768"), "out of range");
    expect_config_failure("huge depth", with_value(dit_metadata, "fpdm.depth", "100000"), "out of range");
    expect_config_failure("huge classes", with_value(dit_metadata, "fpdm.num_classes", "2000000"), "out of range");
    expect_config_failure("bad boolean", with_value(dit_metadata, "fpdm.learn_sigma", "yes"), "fpdm.learn_sigma");
    expect_config_failure("bad unconditional", with_value(dit_metadata, "fpdm.unconditional", "1"),
                          "fpdm.unconditional");
    expect_config_failure("unconditional with 10 classes",
                          with_value(dit_metadata, "fpdm.unconditional", "true"),
                          "an unconditional model has num_classes 1, not 10");
    expect_config_failure("bad boolean case", with_value(fpdm_metadata, "fpdm.zero_terminal_snr", "True"),
                          "fpdm.zero_terminal_snr");
    expect_config_failure("zero terminal SNR without v",
                          with_value(fpdm_metadata, "fpdm.prediction", "eps"),
                          "fpdm.zero_terminal_snr needs fpdm.prediction \"v\", got \"eps\"");
    expect_config_failure("unknown fpdm key", with_value(dit_metadata, "fpdm.hiden_size", "24"),
                          "unknown metadata key fpdm.hiden_size");
    expect_config_failure("fpdm key in dit", with_value(dit_metadata, "fpdm.pre_depth", "1"), "fpdm.pre_depth");
    expect_config_failure("heads", with_value(dit_metadata, "fpdm.num_heads", "5"), "num_heads");
    expect_config_failure("hidden % 4", with_value(with_value(dit_metadata, "fpdm.hidden_size", "18"),
                                                   "fpdm.num_heads", "3"),
                          "divisible by 4");
    expect_config_failure("input % patch", with_value(dit_metadata, "fpdm.input_size", "9"), "patch_size");
    expect_config_failure("too many tokens", with_value(with_value(dit_metadata, "fpdm.input_size", "1024"),
                                                        "fpdm.patch_size", "1"),
                          "tokens");
    expect_config_failure("equivalent depth", with_value(fpdm_metadata, "fpdm.equivalent_depth", "2"),
                          "fpdm.equivalent_depth");
    expect_config_failure("mlp_ratio text", with_value(dit_metadata, "fpdm.mlp_ratio", "abc"), "fpdm.mlp_ratio");
    expect_config_failure("mlp_ratio exponent", with_value(dit_metadata, "fpdm.mlp_ratio", "4e0"), "fpdm.mlp_ratio");
    expect_config_failure("mlp_ratio 18 digits",
                          with_value(dit_metadata, "fpdm.mlp_ratio", "0.333333333333333333"),
                          "fpdm.mlp_ratio");
    expect_config_failure("mlp_ratio 28 places",
                          with_value(dit_metadata, "fpdm.mlp_ratio", "0.0000000000000000000000000001"),
                          "fpdm.mlp_ratio");
    expect_config_failure("mlp_ratio zero", with_value(dit_metadata, "fpdm.mlp_ratio", "0.01"), "mlp_ratio");
    expect_config_failure("prediction", with_value(dit_metadata, "fpdm.prediction", "epsilon"), "fpdm.prediction");
    expect_config_failure("space", with_value(dit_metadata, "fpdm.space", "pixels"), "fpdm.space");
    expect_config_failure("schedule", with_value(dit_metadata, "fpdm.noise_schedule", "cosine"), "fpdm.noise_schedule");
    expect_config_failure("timesteps", with_value(dit_metadata, "fpdm.num_train_timesteps", "0"),
                          "fpdm.num_train_timesteps");
    /* Beyond what a sampler can run: refused at load, not at the first sample. */
    expect_config_failure("one timestep",
                          with_value(dit_metadata, "fpdm.num_train_timesteps", "1"),
                          "fpdm.num_train_timesteps");
    expect_config_failure("too many timesteps",
                          with_value(dit_metadata, "fpdm.num_train_timesteps", "100001"),
                          "fpdm.num_train_timesteps");
}

/* ---- tensor failures -------------------------------------------------------------- */

static void expect_tensor_failure(const char *what, const test_tensor *tensors, int count, const char *keyword) {
    write_model(dit_metadata, tensors, count);
    model_config config;
    safetensors_file file;
    char err[512];
    CHECK_MSG(load_config(&config, &file, err, sizeof(err)) == 0, "%s: %s", what, err);
    int rc = model_config_check_tensors(&config, &file, err, sizeof(err));
    CHECK_MSG(rc == -1, "%s: tensors accepted", what);
    CHECK_MSG(strncmp(err, model_path, strlen(model_path)) == 0, "%s: \"%s\" lacks the path", what, err);
    CHECK_MSG(strstr(err, keyword) != NULL, "%s: message \"%s\" lacks \"%s\"", what, err, keyword);
    safetensors_close(&file);
}

static void test_tensor_failures(void) {
    write_model(dit_metadata, NULL, 0);
    model_config c;
    safetensors_file file;
    char err[512];
    if (load_config(&c, &file, err, sizeof(err)) != 0) return;
    safetensors_close(&file);
    int n;
    test_tensor *good = tensors_for(&c, &n);
    test_tensor *t = calloc((size_t)n + 1, sizeof(*t));
    if (!t) exit(1);

    memcpy(t, good, (size_t)n * sizeof(*t));
    int last = n - 1;
    test_tensor *victim = find_test_tensor(t, n, "blocks.1.mlp.fc2.bias");
    CHECK(victim != NULL);
    if (victim) {
        *victim = t[last];
        expect_tensor_failure("missing", t, n - 1, "missing tensor blocks.1.mlp.fc2.bias");
    }

    memcpy(t, good, (size_t)n * sizeof(*t));
    victim = find_test_tensor(t, n, "blocks.0.attn.qkv.weight");
    CHECK(victim != NULL);
    if (victim) {
        victim->shape[1] = 23;
        expect_tensor_failure("wrong shape", t, n, "tensor blocks.0.attn.qkv.weight has shape [72, 23], expected [72, 24]");
    }

    memcpy(t, good, (size_t)n * sizeof(*t));
    victim = find_test_tensor(t, n, "pos_embed");
    CHECK(victim != NULL);
    if (victim) {
        victim->ndim = 2;
        victim->shape[0] = 16;
        victim->shape[1] = 24;
        expect_tensor_failure("wrong rank", t, n, "pos_embed has shape [16, 24], expected [1, 16, 24]");
    }

    memcpy(t, good, (size_t)n * sizeof(*t));
    snprintf(t[n].name, sizeof(t[n].name), "blocks.2.attn.qkv.weight");
    t[n].dtype = "F32";
    t[n].ndim = 1;
    t[n].shape[0] = 3;
    expect_tensor_failure("extra", t, n + 1, "unexpected tensor blocks.2.attn.qkv.weight");

    memcpy(t, good, (size_t)n * sizeof(*t));
    victim = find_test_tensor(t, n, "y_embedder.embedding_table.weight");
    CHECK(victim != NULL);
    if (victim) {
        victim->dtype = "I64";
        expect_tensor_failure("I64", t, n, "dtype I64; model weights must be F32, F16 or BF16");
    }
    free(t);
    free(good);
}

int main(void) {
    snprintf(temp_dir, sizeof(temp_dir), "/tmp/test_model_config_XXXXXX");
    if (!mkdtemp(temp_dir)) {
        perror("mkdtemp");
        return 1;
    }
    snprintf(model_path, sizeof(model_path), "%s/model.safetensors", temp_dir);
    test_dit();
    test_fpdm();
    test_mlp_ratio();
    test_config_failures();
    test_tensor_failures();
    unlink(model_path);
    rmdir(temp_dir);
    return test_finish("test_model_config");
}
