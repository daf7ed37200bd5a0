/* vae.c - the decoder of Stable Diffusion's VAE (diffusers' AutoencoderKL):
 * loading it from a diffusers safetensors file (fpdm_vae_load) and decoding
 * latents into images (fpdm_vae_decode) over the operations of vae_ops.h.
 *
 * The network, as diffusers builds it for block_out_channels B (n blocks) and
 * layers_per_block L:
 *   post_quant_conv 1x1, conv_in 3x3 to B[n-1],
 *   mid block: resnet, single-head attention over the pixels, resnet,
 *   up block i over reversed(B): L + 1 resnets, then nearest 2x + conv 3x3
 *     except after the last block,
 *   GroupNorm, SiLU, conv_out 3x3.
 * A resnet is x + conv2(SiLU(GN(conv1(SiLU(GN(x)))))), x through a 1x1
 * conv_shortcut when the channel count changes. Every GroupNorm has
 * norm_num_groups groups, eps 1e-6 and an affine transform.
 *
 * Where it runs: a VAE loaded on a CPU context keeps its weights in host
 * memory and decodes on CPU contexts with the table of vae_ops_cpu.c. One
 * loaded on a CUDA context keeps them in one allocation of that context's
 * device, with the CUDA table of vae_ops.h, and decodes on CUDA contexts of
 * the same device; in a build without cuDNN there is no CUDA table, so it
 * keeps them in host memory instead, for CPU contexts.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "context.h"
#include "decimal.h"
#include "fpdm.h"
#include "safetensors.h"
#include "vae.h"
#include "vae_ops.h"

#define VAE_MAX_BLOCKS 8
#define VAE_NORM_EPS 1e-6f
#define VAE_DEFAULT_GROUPS 32
#define VAE_DEFAULT_SCALING_FACTOR 0.18215f
/* Tensor names are built in three levels (block, layer, tensor); each buffer
 * holds the one above plus the longest suffix, so nothing is cut. */
#define VAE_BLOCK_NAME_MAX 64
#define VAE_LAYER_NAME_MAX 96
#define VAE_NAME_MAX 128
/* Images up to this many pixels a side keep every size well inside int. */
#define VAE_MAX_IMAGE_SIZE 8192
/* On a device every tensor and buffer starts on a 256-byte boundary, which
 * cuDNN's and cuBLAS's vectorised kernels want. */
#define VAE_DEVICE_ALIGN_FLOATS 64

typedef struct vae_conv {
    const float *weight; /* [out, in, kernel, kernel] */
    const float *bias;   /* [out] */
    int in_channels, out_channels, kernel;
} vae_conv;

typedef struct vae_norm {
    const float *gamma, *beta;
    int channels;
} vae_norm;

typedef struct vae_resnet {
    vae_norm norm1, norm2;
    vae_conv conv1, conv2;
    int has_shortcut;
    vae_conv shortcut;   /* 1x1, when in_channels != out_channels */
} vae_resnet;

typedef struct vae_attention {
    vae_norm norm;
    vae_conv q, k, v, out; /* linears over channels, applied as 1x1 convolutions */
} vae_attention;

struct fpdm_vae {
    fpdm_vae_info info;
    int num_blocks;
    int block_out_channels[VAE_MAX_BLOCKS];
    int layers_per_block;
    int groups;
    vae_conv post_quant_conv, conv_in;
    vae_resnet mid_resnets[2];
    vae_attention mid_attention;
    vae_resnet *resnets;           /* num_blocks * (layers_per_block + 1), block-major */
    vae_conv upsamplers[VAE_MAX_BLOCKS]; /* all blocks but the last */
    vae_norm norm_out;
    vae_conv conv_out;
    float *weights;                /* one block holding every tensor above */
    int device_index;              /* -1: weights in host memory (malloc) */
    backend *be;                   /* the backend holding them, when on a device */
    vae_ops device_ops;            /* the device's operations, when on a device */
};

/* ---- loading ------------------------------------------------------------ */

/* Walks the architecture twice: first checking every tensor and counting
 * floats (weights == NULL), then converting them into one block. */
typedef struct vae_loader {
    fpdm_context *ctx;
    const safetensors_file *file;
    unsigned char *used;     /* per tensor of the file: claimed by the decoder */
    float *weights;          /* host block the tensors are converted into */
    const float *placed;     /* where that block will live (weights itself, or on a device) */
    size_t align;            /* each tensor starts a multiple of this many floats in */
    size_t offset;
    fpdm_status status;
} vae_loader;

static size_t round_up(size_t n, size_t align) { return (n + align - 1) / align * align; }

static int is_float_dtype(safetensors_dtype dtype) {
    return dtype == SAFETENSORS_F32 || dtype == SAFETENSORS_F16 || dtype == SAFETENSORS_BF16 ||
           dtype == SAFETENSORS_F64;
}

static void format_shape(char *buf, size_t size, int ndim, const int64_t *shape) {
    size_t len = (size_t)snprintf(buf, size, "[");
    for (int d = 0; d < ndim && len < size; d++)
        len += (size_t)snprintf(buf + len, size - len, "%s%lld", d ? ", " : "", (long long)shape[d]);
    if (len < size) snprintf(buf + len, size - len, "]");
}

static int same_shape(const safetensors_tensor *t, int ndim, const int64_t *shape) {
    if (t->ndim != ndim) return 0;
    for (int d = 0; d < ndim; d++)
        if (t->shape[d] != shape[d]) return 0;
    return 1;
}

/* Claims tensor `name` of the given shape; a [C, C] linear may also be stored
 * as a [C, C, 1, 1] convolution (older checkpoints) when linear_as_conv. */
static const float *take(vae_loader *ld, const char *name, int ndim, const int64_t *shape,
                         int linear_as_conv) {
    if (ld->status != FPDM_OK) return NULL;
    const safetensors_tensor *t = safetensors_find(ld->file, name);
    char expected[96], actual[96];
    if (!t) {
        ld->status = context_fail(ld->ctx, FPDM_ERR_BAD_FILE, "%s: tensor %s is missing",
                                  ld->file->path, name);
        return NULL;
    }
    if (!is_float_dtype(t->dtype)) {
        ld->status = context_fail(ld->ctx, FPDM_ERR_BAD_FILE,
                                  "%s: tensor %s has dtype %s, expected a float type",
                                  ld->file->path, name, safetensors_dtype_name(t->dtype));
        return NULL;
    }
    int64_t conv_shape[4] = {shape[0], ndim > 1 ? shape[1] : 1, 1, 1};
    if (!same_shape(t, ndim, shape) &&
        !(linear_as_conv && ndim == 2 && same_shape(t, 4, conv_shape))) {
        format_shape(expected, sizeof expected, ndim, shape);
        format_shape(actual, sizeof actual, t->ndim, t->shape);
        ld->status = context_fail(ld->ctx, FPDM_ERR_BAD_FILE,
                                  "%s: tensor %s has shape %s, expected %s", ld->file->path,
                                  name, actual, expected);
        return NULL;
    }
    const float *placed = NULL;
    if (ld->weights) {
        float *values = ld->weights + ld->offset;
        safetensors_to_f32(t, values);
        placed = ld->placed + ld->offset;
        /* A NaN or infinite weight would decode NaN images without a word. */
        const size_t bad = context_first_non_finite(values, (size_t)t->num_elements);
        if (bad < (size_t)t->num_elements) {
            ld->status = context_fail(ld->ctx, FPDM_ERR_BAD_FILE,
                                      "%s: %s[%zu] is %g (allowed: finite numbers)",
                                      ld->file->path, name, bad, (double)values[bad]);
            return NULL;
        }
    } else {
        ld->used[t - ld->file->tensors] = 1;
    }
    ld->offset += round_up((size_t)t->num_elements, ld->align);
    return placed;
}

static void take_conv(vae_loader *ld, vae_conv *conv, const char *prefix, int in_channels,
                      int out_channels, int kernel) {
    char name[VAE_NAME_MAX];
    int64_t weight_shape[4] = {out_channels, in_channels, kernel, kernel};
    int64_t bias_shape[1] = {out_channels};
    conv->in_channels = in_channels;
    conv->out_channels = out_channels;
    conv->kernel = kernel;
    snprintf(name, sizeof name, "%s.weight", prefix);
    conv->weight = take(ld, name, 4, weight_shape, 0);
    snprintf(name, sizeof name, "%s.bias", prefix);
    conv->bias = take(ld, name, 1, bias_shape, 0);
}

/* A channels x channels linear under its diffusers name or, when that is
 * absent, its pre-0.14 name (query/key/value/proj_attn). */
static void take_linear(vae_loader *ld, vae_conv *conv, const char *prefix, const char *new_name,
                        const char *old_name, int channels) {
    char weight_name[VAE_NAME_MAX], bias_name[VAE_NAME_MAX];
    int64_t weight_shape[2] = {channels, channels};
    int64_t bias_shape[1] = {channels};
    snprintf(weight_name, sizeof weight_name, "%s.%s.weight", prefix, new_name);
    if (!safetensors_find(ld->file, weight_name)) {
        char old_weight_name[VAE_NAME_MAX];
        snprintf(old_weight_name, sizeof old_weight_name, "%s.%s.weight", prefix, old_name);
        if (safetensors_find(ld->file, old_weight_name)) new_name = old_name;
    }
    snprintf(weight_name, sizeof weight_name, "%s.%s.weight", prefix, new_name);
    snprintf(bias_name, sizeof bias_name, "%s.%s.bias", prefix, new_name);
    conv->in_channels = conv->out_channels = channels;
    conv->kernel = 1;
    conv->weight = take(ld, weight_name, 2, weight_shape, 1);
    conv->bias = take(ld, bias_name, 1, bias_shape, 0);
}

static void take_norm(vae_loader *ld, vae_norm *norm, const char *prefix, int channels) {
    char name[VAE_NAME_MAX];
    int64_t shape[1] = {channels};
    norm->channels = channels;
    snprintf(name, sizeof name, "%s.weight", prefix);
    norm->gamma = take(ld, name, 1, shape, 0);
    snprintf(name, sizeof name, "%s.bias", prefix);
    norm->beta = take(ld, name, 1, shape, 0);
}

static void take_resnet(vae_loader *ld, vae_resnet *r, const char *prefix, int in_channels,
                        int out_channels) {
    char name[VAE_LAYER_NAME_MAX];
    snprintf(name, sizeof name, "%s.norm1", prefix);
    take_norm(ld, &r->norm1, name, in_channels);
    snprintf(name, sizeof name, "%s.conv1", prefix);
    take_conv(ld, &r->conv1, name, in_channels, out_channels, 3);
    snprintf(name, sizeof name, "%s.norm2", prefix);
    take_norm(ld, &r->norm2, name, out_channels);
    snprintf(name, sizeof name, "%s.conv2", prefix);
    take_conv(ld, &r->conv2, name, out_channels, out_channels, 3);
    r->has_shortcut = in_channels != out_channels;
    if (r->has_shortcut) {
        snprintf(name, sizeof name, "%s.conv_shortcut", prefix);
        take_conv(ld, &r->shortcut, name, in_channels, out_channels, 1);
    }
}

static void take_decoder(vae_loader *ld, fpdm_vae *vae) {
    char name[VAE_BLOCK_NAME_MAX];
    int n = vae->num_blocks;
    int latent = vae->info.latent_channels;
    int top = vae->block_out_channels[n - 1];
    const char *attn = "decoder.mid_block.attentions.0";
    take_conv(ld, &vae->post_quant_conv, "post_quant_conv", latent, latent, 1);
    take_conv(ld, &vae->conv_in, "decoder.conv_in", latent, top, 3);
    take_resnet(ld, &vae->mid_resnets[0], "decoder.mid_block.resnets.0", top, top);
    snprintf(name, sizeof name, "%s.group_norm", attn);
    take_norm(ld, &vae->mid_attention.norm, name, top);
    take_linear(ld, &vae->mid_attention.q, attn, "to_q", "query", top);
    take_linear(ld, &vae->mid_attention.k, attn, "to_k", "key", top);
    take_linear(ld, &vae->mid_attention.v, attn, "to_v", "value", top);
    take_linear(ld, &vae->mid_attention.out, attn, "to_out.0", "proj_attn", top);
    take_resnet(ld, &vae->mid_resnets[1], "decoder.mid_block.resnets.1", top, top);
    int prev = top;
    for (int i = 0; i < n; i++) {
        int out = vae->block_out_channels[n - 1 - i];
        for (int j = 0; j <= vae->layers_per_block; j++) {
            snprintf(name, sizeof name, "decoder.up_blocks.%d.resnets.%d", i, j);
            take_resnet(ld, &vae->resnets[i * (vae->layers_per_block + 1) + j], name,
                        j == 0 ? prev : out, out);
        }
        if (i < n - 1) {
            snprintf(name, sizeof name, "decoder.up_blocks.%d.upsamplers.0.conv", i);
            take_conv(ld, &vae->upsamplers[i], name, out, out, 3);
        }
        prev = out;
    }
    take_norm(ld, &vae->norm_out, "decoder.conv_norm_out", vae->block_out_channels[0]);
    take_conv(ld, &vae->conv_out, "decoder.conv_out", vae->block_out_channels[0],
              vae->info.image_channels, 3);
}

/* A positive integer from the metadata, or fallback when the key is absent. */
static fpdm_status metadata_int(fpdm_context *ctx, const safetensors_file *file, const char *key,
                                int minimum, int fallback, int *out) {
    const char *text = safetensors_metadata(file, key);
    if (!text) {
        *out = fallback;
        return FPDM_OK;
    }
    char *end;
    long value = strtol(text, &end, 10);
    if (end == text || *end != '\0' || value < minimum || value > 65536)
        return context_fail(ctx, FPDM_ERR_BAD_FILE, "%s: metadata %s = \"%s\" is not an integer >= %d",
                            file->path, key, text, minimum);
    *out = (int)value;
    return FPDM_OK;
}

/* "128,256,512,512" (brackets and spaces allowed) into block_out_channels. */
static fpdm_status parse_block_channels(fpdm_context *ctx, const safetensors_file *file,
                                        const char *text, fpdm_vae *vae) {
    const char *key = "vae.block_out_channels";
    int count = 0;
    const char *p = text;
    for (;;) {
        while (*p == ' ' || *p == '[' || *p == '(') p++;
        char *end;
        long value = strtol(p, &end, 10);
        if (end == p || value < 1 || value > 65536 || count == VAE_MAX_BLOCKS)
            return context_fail(ctx, FPDM_ERR_BAD_FILE,
                                "%s: metadata %s = \"%s\" is not a list of 1 to %d positive integers",
                                file->path, key, text, VAE_MAX_BLOCKS);
        vae->block_out_channels[count++] = (int)value;
        p = end;
        while (*p == ' ' || *p == ']' || *p == ')') p++;
        if (*p == '\0') break;
        if (*p != ',')
            return context_fail(ctx, FPDM_ERR_BAD_FILE, "%s: metadata %s = \"%s\" is malformed",
                                file->path, key, text);
        p++;
    }
    vae->num_blocks = count;
    return FPDM_OK;
}

static const safetensors_tensor *find_4d(const safetensors_file *file, const char *name) {
    const safetensors_tensor *t = safetensors_find(file, name);
    return t && t->ndim == 4 ? t : NULL;
}

/* The configuration from the metadata where present, else from the shapes
 * (diffusers files carry none). The tensors are checked against it later. */
static fpdm_status read_config(fpdm_context *ctx, const safetensors_file *file, fpdm_vae *vae) {
    char name[256];
    fpdm_status status;
    const safetensors_tensor *t;

    const char *channels_text = safetensors_metadata(file, "vae.block_out_channels");
    if (channels_text) {
        if ((status = parse_block_channels(ctx, file, channels_text, vae)) != FPDM_OK) return status;
    } else {
        /* Up block i works at reversed(block_out_channels)[i] channels. */
        int found[VAE_MAX_BLOCKS + 1];
        int n = 0;
        for (; n <= VAE_MAX_BLOCKS; n++) {
            snprintf(name, sizeof name, "decoder.up_blocks.%d.resnets.0.conv1.weight", n);
            if (!(t = find_4d(file, name))) break;
            if (t->shape[0] < 1 || t->shape[0] > 65536)
                return context_fail(ctx, FPDM_ERR_BAD_FILE, "%s: tensor %s has %lld output channels",
                                    file->path, name, (long long)t->shape[0]);
            found[n] = (int)t->shape[0];
        }
        if (n == 0)
            return context_fail(ctx, FPDM_ERR_BAD_FILE,
                                "%s: tensor decoder.up_blocks.0.resnets.0.conv1.weight is missing "
                                "(not the decoder of a diffusers AutoencoderKL)", file->path);
        if (n > VAE_MAX_BLOCKS)
            return context_fail(ctx, FPDM_ERR_UNSUPPORTED, "%s: more than %d up blocks",
                                file->path, VAE_MAX_BLOCKS);
        vae->num_blocks = n;
        for (int i = 0; i < n; i++) vae->block_out_channels[n - 1 - i] = found[i];
    }

    int layers_found = 0;
    for (; layers_found < 64; layers_found++) {
        snprintf(name, sizeof name, "decoder.up_blocks.0.resnets.%d.conv1.weight", layers_found);
        if (!safetensors_find(file, name)) break;
    }
    if ((status = metadata_int(ctx, file, "vae.layers_per_block", 0,
                               layers_found > 0 ? layers_found - 1 : 0,
                               &vae->layers_per_block)) != FPDM_OK)
        return status;

    int64_t latent_guess = 4;
    if ((t = find_4d(file, "post_quant_conv.weight")))
        latent_guess = t->shape[0];
    else if ((t = find_4d(file, "decoder.conv_in.weight")))
        latent_guess = t->shape[1];
    if (latent_guess < 1 || latent_guess > 65536) latent_guess = 4;
    if ((status = metadata_int(ctx, file, "vae.latent_channels", 1, (int)latent_guess,
                               &vae->info.latent_channels)) != FPDM_OK)
        return status;

    int image_guess = 3;
    if ((t = find_4d(file, "decoder.conv_out.weight")) && t->shape[0] >= 1 && t->shape[0] <= 64)
        image_guess = (int)t->shape[0];
    vae->info.image_channels = image_guess;

    if ((status = metadata_int(ctx, file, "vae.norm_num_groups", 1, VAE_DEFAULT_GROUPS,
                               &vae->groups)) != FPDM_OK)
        return status;
    for (int i = 0; i < vae->num_blocks; i++)
        if (vae->block_out_channels[i] % vae->groups != 0)
            return context_fail(ctx, FPDM_ERR_BAD_FILE,
                                "%s: %d channels do not split into %d groups (vae.norm_num_groups)",
                                file->path, vae->block_out_channels[i], vae->groups);

    vae->info.scaling_factor = VAE_DEFAULT_SCALING_FACTOR;
    const char *scale_text = safetensors_metadata(file, "vae.scaling_factor");
    if (scale_text) {
        double value = 0.0;
        if (!decimal_parse(scale_text, &value) || !(value > 0.0))
            return context_fail(ctx, FPDM_ERR_BAD_FILE,
                                "%s: metadata vae.scaling_factor = \"%s\" is not a positive "
                                "plain decimal (digits and one '.', at most %d significant and "
                                "%d after the point)", file->path, scale_text,
                                DECIMAL_MAX_SIGNIFICANT_DIGITS, DECIMAL_MAX_FRACTION_DIGITS);
        vae->info.scaling_factor = (float)value;
    }
    vae->info.upscale = 1 << (vae->num_blocks - 1);
    return FPDM_OK;
}

static int is_ignored_tensor(const char *name) {
    return strncmp(name, "encoder.", 8) == 0 || strncmp(name, "quant_conv.", 11) == 0;
}

static fpdm_status load_from_file(fpdm_context *ctx, const safetensors_file *file, fpdm_vae *vae) {
    fpdm_status status = read_config(ctx, file, vae);
    if (status != FPDM_OK) return status;
    size_t num_resnets = (size_t)vae->num_blocks * (vae->layers_per_block + 1);
    vae->resnets = calloc(num_resnets, sizeof *vae->resnets);
    int on_device = vae->device_index >= 0;
    vae_loader ld = {.ctx = ctx, .file = file, .status = FPDM_OK,
                     .align = on_device ? VAE_DEVICE_ALIGN_FLOATS : 1};
    ld.used = calloc((size_t)file->num_tensors + 1, 1);
    if (!vae->resnets || !ld.used) {
        free(ld.used);
        return context_fail(ctx, FPDM_ERR_OUT_OF_MEMORY, "%s: out of memory", file->path);
    }
    take_decoder(&ld, vae);
    for (int i = 0; ld.status == FPDM_OK && i < file->num_tensors; i++)
        if (!ld.used[i] && !is_ignored_tensor(file->tensors[i].name))
            ld.status = context_fail(ctx, FPDM_ERR_BAD_FILE,
                                     "%s: unexpected tensor %s (not part of this AutoencoderKL decoder)",
                                     file->path, file->tensors[i].name);
    free(ld.used);
    if (ld.status != FPDM_OK) return ld.status;

    size_t num_floats = ld.offset;
    /* Zeroed on a device, so the alignment gaps go up defined. */
    float *host = on_device ? calloc(num_floats, sizeof(float)) : malloc(num_floats * sizeof(float));
    if (!host)
        return context_fail(ctx, FPDM_ERR_OUT_OF_MEMORY, "%s: cannot allocate %.1f MB for the weights",
                            file->path, (double)(num_floats * sizeof(float)) / (1 << 20));
    if (on_device) {
        vae->be = ctx->be;
        vae->weights = ctx->be->alloc(ctx->be, num_floats);
        if (!vae->weights) {
            free(host);
            return context_fail(ctx, FPDM_ERR_OUT_OF_MEMORY,
                                "%s: cannot allocate %.1f MB of VAE weights on %s", file->path,
                                (double)(num_floats * sizeof(float)) / (1 << 20), ctx->device_name);
        }
    } else {
        vae->weights = host;
    }
    ld.weights = host;
    ld.placed = vae->weights;
    ld.offset = 0;
    take_decoder(&ld, vae);
    if (ld.status != FPDM_OK) {
        if (on_device) free(host);
        return ld.status;
    }

    /* post_quant_conv(z / s) = (W / s) z + b: the division by the scaling
     * factor rides on the first weights. decimal_parse keeps s a positive
     * float (at least 1e-27), so a quotient leaves float's range only for a
     * large weight. */
    float *post_quant_weight = host + (vae->post_quant_conv.weight - vae->weights);
    size_t count = (size_t)vae->info.latent_channels * vae->info.latent_channels;
    for (size_t i = 0; i < count; i++) {
        post_quant_weight[i] /= vae->info.scaling_factor;
        if (!isfinite(post_quant_weight[i])) {
            if (on_device) free(host);
            return context_fail(ctx, FPDM_ERR_BAD_FILE,
                                "%s: post_quant_conv.weight[%zu] / vae.scaling_factor %g is not a "
                                "finite float", file->path, i, (double)vae->info.scaling_factor);
        }
    }
    if (on_device) {
        int failed = ctx->be->upload(ctx->be, vae->weights, host, num_floats);
        free(host);
        if (failed)
            return context_device_fail(ctx, "%s: uploading the VAE weights to %s", file->path,
                                       ctx->device_name);
        char err[512];
        const vae_ops *ops = &vae->device_ops;
        if (ops->adopt_weights &&
            ops->adopt_weights(ops, ctx->be, vae->weights, num_floats, err, sizeof err) != 0)
            return context_fail(ctx, FPDM_ERR_DEVICE, "%s: %s", file->path, err);
    }
    return FPDM_OK;
}

/* Where a VAE loaded on ctx lives, and (on a device) its operations. */
static fpdm_status choose_device(fpdm_context *ctx, fpdm_vae *vae) {
    vae->device_index = -1;
#ifdef FPDM_HAVE_CUDNN
    if (ctx->be && ctx->device_index >= 0) {
        char err[512];
        if (vae_ops_cuda_init(&vae->device_ops, ctx->be, err, sizeof err) != 0)
            return context_fail(ctx, FPDM_ERR_DEVICE, "%s: %s", ctx->device_name, err);
        vae->device_index = ctx->device_index;
    }
#else
    (void)ctx;
#endif
    return FPDM_OK;
}

fpdm_status fpdm_vae_load(fpdm_context *ctx, const char *path, fpdm_vae **out) {
    if (out) *out = NULL;
    if (!ctx) return FPDM_ERR_INVALID_ARGUMENT;
    if (!path || !out)
        return context_fail(ctx, FPDM_ERR_INVALID_ARGUMENT, "fpdm_vae_load: path and out are required");
    if (context_check_device(ctx) != FPDM_OK) return FPDM_ERR_INVALID_ARGUMENT;
    safetensors_file file;
    char err[1024];
    int open_result = safetensors_open(path, &file, err, sizeof err);
    if (open_result != 0)
        return context_fail(ctx, safetensors_failure_status(open_result, path), "%s", err);
    fpdm_vae *vae = calloc(1, sizeof *vae);
    if (!vae) {
        safetensors_close(&file);
        return context_fail(ctx, FPDM_ERR_OUT_OF_MEMORY, "%s: out of memory", path);
    }
    fpdm_status status = choose_device(ctx, vae);
    if (status == FPDM_OK) status = load_from_file(ctx, &file, vae);
    safetensors_close(&file);
    if (status != FPDM_OK) {
        fpdm_vae_free(vae);
        return status;
    }
    *out = vae;
    return FPDM_OK;
}

void fpdm_vae_free(fpdm_vae *vae) {
    if (!vae) return;
    if (vae->be) {
        if (vae->weights) vae->be->release(vae->be, vae->weights);
    } else {
        free(vae->weights);
    }
    if (vae->device_ops.destroy) vae->device_ops.destroy(&vae->device_ops);
    free(vae->resnets);
    free(vae);
}

const fpdm_vae_info *fpdm_vae_get_info(const fpdm_vae *vae) { return vae ? &vae->info : NULL; }

/* ---- decoding ----------------------------------------------------------- */

/* Images decoded together stay within this many bytes of activations: on a
 * device a batch keeps cuDNN's kernels full (one image at 256 px leaves much
 * of an H100 idle); on the CPU batching gains nothing, so the bound only
 * keeps the arena small while still exercising the batched operations. */
#define VAE_DEVICE_CHUNK_BYTES ((size_t)4 << 30)
#define VAE_CPU_CHUNK_BYTES ((size_t)256 << 20)

/* Where a chunk of images' activations live inside the arena. x carries the
 * running activation; a and b are temporaries as big as the largest
 * activation; attn_k / attn_v hold the mid block's keys and values; scratch
 * serves the operations. Each holds `batch` images back to back. */
typedef struct vae_buffers {
    float *x, *a, *b, *attn_k, *attn_v, *scratch;
} vae_buffers;

/* Per buffer for a chunk of `batch` images: elements of the activation
 * type for the activations, floats for the scratch. */
typedef struct vae_plan {
    backend_dtype type;
    size_t activation, attention_kv, scratch;
} vae_plan;

static size_t max_size(size_t a, size_t b) { return a > b ? a : b; }

static size_t conv_scratch(const vae_ops *ops, const vae_conv *conv, int batch, int size) {
    return ops->conv2d_scratch_floats(ops, batch, conv->in_channels, conv->out_channels, size,
                                      size, conv->kernel);
}

static backend_dtype activation_type(const vae_ops *ops) {
    return ops->activation_type ? ops->activation_type(ops) : BACKEND_F32;
}

static vae_plan plan_decode(const fpdm_vae *vae, const vae_ops *ops, int latent_size, int batch) {
    vae_plan plan = {activation_type(ops), 0, 0, 0};
    int n = vae->num_blocks;
    int per_block = vae->layers_per_block + 1;
    int top = vae->block_out_channels[n - 1];
    size_t pixels = (size_t)latent_size * latent_size;
    size_t activation = max_size((size_t)vae->info.latent_channels, (size_t)top) * pixels;
    plan.attention_kv = (size_t)batch * top * pixels;
    plan.scratch = max_size(conv_scratch(ops, &vae->conv_in, batch, latent_size),
                            ops->attention_scratch_floats(ops, top, (int)pixels));
    for (int m = 0; m < 2; m++) {
        plan.scratch = max_size(plan.scratch, conv_scratch(ops, &vae->mid_resnets[m].conv1, batch, latent_size));
        plan.scratch = max_size(plan.scratch, conv_scratch(ops, &vae->mid_resnets[m].conv2, batch, latent_size));
    }
    int size = latent_size;
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < per_block; j++) {
            const vae_resnet *r = &vae->resnets[i * per_block + j];
            size_t channels = max_size((size_t)r->conv1.in_channels, (size_t)r->conv1.out_channels);
            activation = max_size(activation, channels * size * size);
            plan.scratch = max_size(plan.scratch, conv_scratch(ops, &r->conv1, batch, size));
            plan.scratch = max_size(plan.scratch, conv_scratch(ops, &r->conv2, batch, size));
        }
        if (i < n - 1) {
            size *= 2;
            activation = max_size(activation, (size_t)vae->upsamplers[i].in_channels * size * size);
            plan.scratch = max_size(plan.scratch, conv_scratch(ops, &vae->upsamplers[i], batch, size));
        }
    }
    plan.scratch = max_size(plan.scratch, conv_scratch(ops, &vae->conv_out, batch, size));
    /* With 16-bit activations the images come out of conv_out into b before
     * they are widened. */
    activation = max_size(activation, (size_t)vae->info.image_channels * size * size);
    plan.activation = (size_t)batch * activation;
    return plan;
}

/* How many of `batch` images to decode at once: as many as fit in
 * chunk_bytes of activations, at least one. */
static int chunk_images(const fpdm_vae *vae, const vae_ops *ops, int latent_size, int batch,
                        size_t chunk_bytes) {
    vae_plan one = plan_decode(vae, ops, latent_size, 1);
    size_t per_image = (3 * backend_dtype_floats(one.type, one.activation) +
                        2 * backend_dtype_floats(one.type, one.attention_kv)) * sizeof(float);
    size_t fit = chunk_bytes / per_image;
    if (fit < 1) fit = 1;
    return fit < (size_t)batch ? (int)fit : batch;
}

static void run_conv(const vae_ops *ops, const vae_conv *conv, float *out, const float *in,
                     const float *residual, int batch, int size, float *scratch) {
    ops->conv2d(ops, out, in, conv->weight, conv->bias, residual, batch, conv->in_channels,
                conv->out_channels, size, size, conv->kernel, scratch);
}

static void run_norm(const vae_ops *ops, const fpdm_vae *vae, const vae_norm *norm, float *out,
                     const float *in, int batch, int size, int silu) {
    ops->group_norm(ops, out, in, norm->gamma, norm->beta, batch, norm->channels, size * size,
                    vae->groups, VAE_NORM_EPS, silu);
}

/* x [in, size, size] -> x [out, size, size], per image. */
static void run_resnet(const vae_ops *ops, const fpdm_vae *vae, const vae_resnet *r,
                       const vae_buffers *buf, int batch, int size) {
    run_norm(ops, vae, &r->norm1, buf->a, buf->x, batch, size, 1);
    run_conv(ops, &r->conv1, buf->b, buf->a, NULL, batch, size, buf->scratch);
    run_norm(ops, vae, &r->norm2, buf->a, buf->b, batch, size, 1);
    const float *residual = buf->x;
    if (r->has_shortcut) {
        run_conv(ops, &r->shortcut, buf->b, buf->x, NULL, batch, size, buf->scratch);
        residual = buf->b;
    }
    run_conv(ops, &r->conv2, buf->x, buf->a, residual, batch, size, buf->scratch);
}

/* x += out_proj(attention(q, k, v of GroupNorm(x))), rescale_output_factor 1. */
static void run_attention(const vae_ops *ops, const fpdm_vae *vae, const vae_attention *at,
                          const vae_buffers *buf, int batch, int size) {
    int tokens = size * size;
    run_norm(ops, vae, &at->norm, buf->a, buf->x, batch, size, 0);
    run_conv(ops, &at->q, buf->b, buf->a, NULL, batch, size, buf->scratch);
    run_conv(ops, &at->k, buf->attn_k, buf->a, NULL, batch, size, buf->scratch);
    run_conv(ops, &at->v, buf->attn_v, buf->a, NULL, batch, size, buf->scratch);
    ops->attention(ops, buf->a, buf->b, buf->attn_k, buf->attn_v, batch, at->norm.channels,
                   tokens, buf->scratch);
    run_conv(ops, &at->out, buf->x, buf->a, buf->x, batch, size, buf->scratch);
}

/* Lays the buffers out from arena, each starting a multiple of align floats
 * in; returns the floats they take (arena may be NULL to only count). */
static size_t place_buffers(float *arena, const vae_plan *plan, size_t align, vae_buffers *buf) {
    size_t activation = round_up(backend_dtype_floats(plan->type, plan->activation), align);
    size_t attention_kv = round_up(backend_dtype_floats(plan->type, plan->attention_kv), align);
    if (arena) {
        buf->x = arena;
        buf->a = buf->x + activation;
        buf->b = buf->a + activation;
        buf->attn_k = buf->b + activation;
        buf->attn_v = buf->attn_k + attention_kv;
        buf->scratch = buf->attn_v + attention_kv;
    }
    return 3 * activation + 2 * attention_kv + round_up(plan->scratch, align);
}

/* latents [batch, latent_channels, size, size] -> images, batch <= plan's;
 * both float32, converted at the ends where the activations are not. */
static void decode_chunk(const vae_ops *ops, const fpdm_vae *vae, const vae_buffers *buf,
                         int batch, int latent_size, const float *latents, float *images) {
    int size = latent_size;
    int per_block = vae->layers_per_block + 1;
    int widened = activation_type(ops) != BACKEND_F32;
    const float *z = latents;
    if (widened) {
        ops->to_activation(ops, buf->b, latents, batch, vae->info.latent_channels, size * size);
        z = buf->b;
    }
    run_conv(ops, &vae->post_quant_conv, buf->a, z, NULL, batch, size, buf->scratch);
    run_conv(ops, &vae->conv_in, buf->x, buf->a, NULL, batch, size, buf->scratch);
    run_resnet(ops, vae, &vae->mid_resnets[0], buf, batch, size);
    run_attention(ops, vae, &vae->mid_attention, buf, batch, size);
    run_resnet(ops, vae, &vae->mid_resnets[1], buf, batch, size);
    for (int i = 0; i < vae->num_blocks; i++) {
        for (int j = 0; j < per_block; j++)
            run_resnet(ops, vae, &vae->resnets[i * per_block + j], buf, batch, size);
        if (i < vae->num_blocks - 1) {
            const vae_conv *up = &vae->upsamplers[i];
            ops->upsample_nearest2x(ops, buf->a, buf->x, batch, up->in_channels, size, size);
            size *= 2;
            run_conv(ops, up, buf->x, buf->a, NULL, batch, size, buf->scratch);
        }
    }
    run_norm(ops, vae, &vae->norm_out, buf->a, buf->x, batch, size, 1);
    run_conv(ops, &vae->conv_out, widened ? buf->b : images, buf->a, NULL, batch, size,
             buf->scratch);
    if (widened)
        ops->from_activation(ops, images, buf->b, batch, vae->info.image_channels, size * size);
}

static fpdm_status device_mismatch(fpdm_context *ctx, const fpdm_vae *vae, const char *who) {
    if (vae->device_index < 0) {
#ifdef FPDM_HAVE_CUDNN
        return context_fail(ctx, FPDM_ERR_INVALID_ARGUMENT,
                            "%s: the VAE was loaded on a CPU context; load it on this context (%s) "
                            "to decode there", who, ctx->device_name);
#else
        return context_fail(ctx, FPDM_ERR_UNSUPPORTED,
                            "%s: this build has no cuDNN, so the VAE decoder runs on CPU contexts "
                            "only (this one is %s)", who, ctx->device_name);
#endif
    }
    return context_fail(ctx, FPDM_ERR_INVALID_ARGUMENT,
                        "%s: the VAE was loaded on cuda:%d, not on this context's device (%s)",
                        who, vae->device_index, ctx->device_name);
}

/* The checks fpdm_vae_decode and fpdm_vae_prepare (`who`) make of a request
 * to decode `batch` latents of latent_size a side on ctx (not NULL). */
static fpdm_status check_request(fpdm_context *ctx, const fpdm_vae *vae, int batch,
                                 int latent_size, const char *who) {
    if (!vae) return context_fail(ctx, FPDM_ERR_INVALID_ARGUMENT, "%s: vae is required", who);
    if (batch < 1 || latent_size < 1 || latent_size > VAE_MAX_IMAGE_SIZE / vae->info.upscale)
        return context_fail(ctx, FPDM_ERR_INVALID_ARGUMENT,
                            "%s: batch %d and latent size %d must be >= 1, with images of at most "
                            "%d pixels a side", who, batch, latent_size, VAE_MAX_IMAGE_SIZE);
    if (context_check_device(ctx) != FPDM_OK) return FPDM_ERR_INVALID_ARGUMENT;
    if (ctx->device_index != vae->device_index) return device_mismatch(ctx, vae, who);
    return FPDM_OK;
}

/* The arena for decoding *chunk images at a time: the buffers, then room to
 * stage that many latents and images on a device (latent_floats and
 * image_floats per image; 0 where they stay in host memory). A context short
 * of memory (a smaller card, a large sampler arena beside it) decodes fewer
 * images at a time rather than none: *chunk halves down to one. NULL when
 * not even one fits. */
static float *reserve_arena(fpdm_context *ctx, const fpdm_vae *vae, const vae_ops *ops,
                            int latent_size, size_t align, size_t latent_floats,
                            size_t image_floats, int *chunk, vae_plan *plan, size_t *buffers) {
    for (;;) {
        *plan = plan_decode(vae, ops, latent_size, *chunk);
        *buffers = place_buffers(NULL, plan, align, NULL);
        size_t staging = round_up((size_t)*chunk * latent_floats, align) + (size_t)*chunk * image_floats;
        /* Only the last try records a failure: a smaller chunk that fits
         * leaves no error behind a call that succeeds. */
        float *arena = *chunk == 1 ? context_arena(ctx, *buffers + staging)
                                   : context_arena_try(ctx, *buffers + staging);
        if (arena || *chunk == 1) return arena;
        *chunk = (*chunk + 1) / 2;
        context_log(ctx, FPDM_LOG_WARN, "%s: VAE decoder: retrying %d images at a time",
                    ctx->device_name, *chunk);
    }
}

/* One decode's operations and memory: `chunk` images at a time in buffers
 * laid out in the context's arena and, on a device, room after them where
 * latents go up and images come down. */
typedef struct decode_setup {
    vae_ops cpu_ops;           /* the CPU's table, built per decode */
    const vae_ops *ops;        /* cpu_ops, or the VAE's device table, bound until finish_decode */
    int on_device;
    int chunk;
    vae_buffers buf;
    float *device_latents, *device_images;
    size_t latent_floats, image_floats; /* per image */
} decode_setup;

static void finish_decode(const decode_setup *ds) {
    if (ds->ops->end) ds->ops->end(ds->ops);
}

/* Binds the operations and reserves the arena for a checked request
 * (chunk_bytes 0: the device's default bound). On FPDM_OK the caller ends
 * with finish_decode. */
static fpdm_status setup_decode(fpdm_context *ctx, const fpdm_vae *vae, int batch,
                                int latent_size, size_t chunk_bytes, decode_setup *ds) {
    memset(ds, 0, sizeof *ds);
    ds->latent_floats = (size_t)vae->info.latent_channels * latent_size * latent_size;
    size_t image_size = (size_t)latent_size * vae->info.upscale;
    ds->image_floats = (size_t)vae->info.image_channels * image_size * image_size;
    ds->on_device = vae->device_index >= 0;
    size_t align = 1, staged_latent = 0, staged_image = 0;
    size_t default_chunk_bytes = VAE_CPU_CHUNK_BYTES;
    if (ds->on_device) {
        char err[512];
        ds->ops = &vae->device_ops;
        if (ds->ops->begin(ds->ops, ctx->be, err, sizeof err) != 0)
            return context_fail(ctx, FPDM_ERR_DEVICE, "%s: VAE decoder: %s", ctx->device_name, err);
        align = VAE_DEVICE_ALIGN_FLOATS;
        staged_latent = ds->latent_floats;
        staged_image = ds->image_floats;
        default_chunk_bytes = VAE_DEVICE_CHUNK_BYTES;
    } else {
        vae_ops_cpu_init(&ds->cpu_ops, ctx->num_threads);
        ds->ops = &ds->cpu_ops;
    }
    ds->chunk = chunk_images(vae, ds->ops, latent_size, batch,
                             chunk_bytes ? chunk_bytes : default_chunk_bytes);
    vae_plan plan;
    size_t buffers;
    float *arena = reserve_arena(ctx, vae, ds->ops, latent_size, align, staged_latent,
                                 staged_image, &ds->chunk, &plan, &buffers);
    if (!arena) {
        finish_decode(ds);
        return FPDM_ERR_OUT_OF_MEMORY;
    }
    place_buffers(arena, &plan, align, &ds->buf);
    ds->device_latents = arena + buffers;
    ds->device_images = ds->device_latents + round_up((size_t)ds->chunk * staged_latent, align);
    return FPDM_OK;
}

/* Operations that only get ready: convolutions choose their algorithms
 * (prepare_conv2d) for the activation type, the rest do nothing.
 * decode_chunk run over this table readies every shape a decode will meet,
 * without touching memory. */
static void prepare_only_conv2d(const vae_ops *ops, float *out, const float *in,
                                const float *weight, const float *bias, const float *residual,
                                int batch, int in_channels, int out_channels, int height,
                                int width, int kernel, float *scratch) {
    (void)out, (void)in, (void)weight, (void)bias, (void)residual, (void)scratch;
    ops->prepare_conv2d(ops, batch, in_channels, out_channels, height, width, kernel);
}

static void prepare_only_group_norm(const vae_ops *ops, float *out, const float *in,
                                    const float *gamma, const float *beta, int batch,
                                    int channels, int pixels, int groups, float eps, int silu) {
    (void)ops, (void)out, (void)in, (void)gamma, (void)beta, (void)batch, (void)channels;
    (void)pixels, (void)groups, (void)eps, (void)silu;
}

static void prepare_only_upsample(const vae_ops *ops, float *out, const float *in, int batch,
                                  int channels, int height, int width) {
    (void)ops, (void)out, (void)in, (void)batch, (void)channels, (void)height, (void)width;
}

static void prepare_only_convert(const vae_ops *ops, float *out, const float *in, int batch,
                                 int channels, int pixels) {
    (void)ops, (void)out, (void)in, (void)batch, (void)channels, (void)pixels;
}

static void prepare_only_attention(const vae_ops *ops, float *out, const float *q,
                                   const float *k, const float *v, int batch, int channels,
                                   int tokens, float *scratch) {
    (void)ops, (void)out, (void)q, (void)k, (void)v, (void)batch, (void)channels, (void)tokens;
    (void)scratch;
}

/* Readies the shapes of a whole decode of `batch` images: a full chunk and
 * the remainder. */
static void prepare_shapes(const decode_setup *ds, const fpdm_vae *vae, int batch,
                           int latent_size) {
    if (!ds->ops->prepare_conv2d) return;
    vae_ops preparer = *ds->ops;
    preparer.conv2d = prepare_only_conv2d;
    preparer.group_norm = prepare_only_group_norm;
    preparer.upsample_nearest2x = prepare_only_upsample;
    preparer.attention = prepare_only_attention;
    preparer.to_activation = prepare_only_convert;
    preparer.from_activation = prepare_only_convert;
    decode_chunk(&preparer, vae, &ds->buf, ds->chunk, latent_size, ds->device_latents,
                 ds->device_images);
    if (batch % ds->chunk)
        decode_chunk(&preparer, vae, &ds->buf, batch % ds->chunk, latent_size,
                     ds->device_latents, ds->device_images);
}

/* Decodes the chunks in turn: on the CPU where they lie; on a device each
 * chunk of latents goes up into the arena, is decoded there, and its images
 * come back down (the download waits). 0, or -1 when a transfer failed. */
static int decode_chunks(fpdm_context *ctx, const fpdm_vae *vae, const decode_setup *ds,
                         int batch, int latent_size, const float *latents, float *images) {
    backend *be = ctx->be;
    for (int first = 0; first < batch; first += ds->chunk) {
        int count = batch - first < ds->chunk ? batch - first : ds->chunk;
        const float *part_latents = latents + (size_t)first * ds->latent_floats;
        float *part_images = images + (size_t)first * ds->image_floats;
        if (!ds->on_device) {
            decode_chunk(ds->ops, vae, &ds->buf, count, latent_size, part_latents, part_images);
            continue;
        }
        if (be->upload(be, ds->device_latents, part_latents, (size_t)count * ds->latent_floats) != 0)
            return -1;
        decode_chunk(ds->ops, vae, &ds->buf, count, latent_size, ds->device_latents,
                     ds->device_images);
        if (be->download(be, part_images, ds->device_images, (size_t)count * ds->image_floats) != 0)
            return -1;
    }
    return 0;
}

fpdm_status vae_decode_in_chunks(fpdm_context *ctx, const fpdm_vae *vae, int batch,
                                 int latent_size, const float *latents, float *images,
                                 size_t chunk_bytes) {
    if (!ctx) return FPDM_ERR_INVALID_ARGUMENT;
    if (!latents || !images)
        return context_fail(ctx, FPDM_ERR_INVALID_ARGUMENT,
                            "fpdm_vae_decode: latents and images are required");
    fpdm_status status = check_request(ctx, vae, batch, latent_size, "fpdm_vae_decode");
    if (status == FPDM_OK)
        status = context_check_finite(ctx, "latents", latents,
                                      (size_t)batch * vae->info.latent_channels * latent_size *
                                          latent_size);
    decode_setup ds;
    if (status == FPDM_OK) status = setup_decode(ctx, vae, batch, latent_size, chunk_bytes, &ds);
    if (status != FPDM_OK) return status;
    int failed = decode_chunks(ctx, vae, &ds, batch, latent_size, latents, images);
    finish_decode(&ds);
    if (failed) return context_device_fail(ctx, "%s: VAE decode", ctx->device_name);
    /* Finite weights can still overflow (a 3e38 in conv_out): black images
     * with FPDM_OK would hide it. */
    const size_t image_size = (size_t)latent_size * vae->info.upscale;
    const size_t per_image = (size_t)vae->info.image_channels * image_size * image_size;
    const size_t bad = context_first_non_finite(images, (size_t)batch * per_image);
    if (bad < (size_t)batch * per_image)
        return context_fail(ctx, FPDM_ERR_NOT_FINITE,
                            "image %zu of the decode holds %g: the VAE's weights took the "
                            "arithmetic past float32's range", bad / per_image, (double)images[bad]);
    return FPDM_OK;
}

fpdm_status fpdm_vae_decode(fpdm_context *ctx, const fpdm_vae *vae, int batch, int latent_size,
                            const float *latents, float *images) {
    return vae_decode_in_chunks(ctx, vae, batch, latent_size, latents, images, 0);
}

fpdm_status fpdm_vae_prepare(fpdm_context *ctx, const fpdm_vae *vae, int batch, int latent_size) {
    if (!ctx) return FPDM_ERR_INVALID_ARGUMENT;
    fpdm_status status = check_request(ctx, vae, batch, latent_size, "fpdm_vae_prepare");
    decode_setup ds;
    if (status == FPDM_OK) status = setup_decode(ctx, vae, batch, latent_size, 0, &ds);
    if (status != FPDM_OK) return status;
    prepare_shapes(&ds, vae, batch, latent_size);
    int failed = ds.on_device && ctx->be->synchronize(ctx->be) != 0;
    finish_decode(&ds);
    return failed ? context_device_fail(ctx, "%s: VAE preparation", ctx->device_name) : FPDM_OK;
}
