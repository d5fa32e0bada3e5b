// Scale-Up, Scale-Out and the Hugging Face layout:
//   moekit grow <in_dir> <out_dir> --d-model 1024 --d-ffn 2752 --n-layers 16 --width aki --depth interpolate
//     (in_dir a MoEKit LM, or a Hugging Face LLaMA / Mistral / Qwen2 directory,
//      grown into one of the same kind tensor by tensor: [--dtype bf16 --shard-size 5GB])
//   moekit upcycle <in_dir> <out_dir> --experts 8 --top-k 2 [--granularity G]
//     (in_dir a MoEKit LM, or a Hugging Face LLaMA / Mistral directory, which
//      becomes a Mixtral directory tensor by tensor: [--dtype bf16 --shard-size 5GB])
//   moekit export hf <model_dir> <hf_dir> [--dtype bf16 --shard-size 5GB]
//   moekit import hf <hf_dir> <model_dir> [--dtype bf16]   (tensor by tensor)
//   moekit quantize <model_dir> <out_dir> --experts int8|bf16
#include <iomanip>
#include <iostream>
#include <sstream>

#include "commands.h"
#include "moekit/core/check.h"
#include "moekit/core/file_io.h"
#include "moekit/core/process_memory.h"
#include "moekit/core/safetensors_stream.h"
#include "moekit/models/lm/hf_import.h"
#include "moekit/models/lm/hf_llama.h"
#include "moekit/scale/grow.h"
#include "moekit/scale/hf_scale.h"
#include "moekit/scale/upcycle.h"

namespace moekit::cli {
namespace {

// Copies from_dir's tokenizer files (tokenizer.model; tokenizer.json and
// tokenizer_config.json; a Hugging Face directory's generation_config.json)
// that are regular files inside from_dir: a symlink
// leaving the input directory (to /etc/passwd, say) would copy a file the
// user never meant to publish.
void copy_tokenizer(const std::string& from_dir, const std::string& to_dir) {
  for (const char* name : {"tokenizer.model", "tokenizer.json", "tokenizer_config.json", "generation_config.json"}) {
    const std::string path = from_dir + "/" + name;
    if (!path_exists(path)) continue;
    check_inside_dir(path, from_dir);
    write_file_atomic(to_dir + "/" + name, read_file(path));
  }
}

std::string describe(const LmWeights& m) {
  LmModel model(m.config);
  const ParameterCount count = count_parameters(model);
  return std::to_string(count.total) + " parameters, " + std::to_string(count.active) + " active per token";
}

// --dtype and --shard-size, for commands that write Hugging Face weight files.
struct HfWriteFlags {
  std::string dtype, shard_size = "5GB";
  HfWriteOptions options() const {
    HfWriteOptions o;
    if (!dtype.empty()) o.dtype = parse_hf_dtype(dtype);
    o.max_shard_bytes = parse_byte_size(shard_size);
    return o;
  }
};

void add_hf_write_flags(CLI::App& cmd, HfWriteFlags& flags) {
  cmd.add_option("--dtype", flags.dtype, "Weight dtype of the Hugging Face output: bf16 | fp16 | fp32 (default: each tensor's own)")
      ->check(CLI::IsMember({"bf16", "bfloat16", "fp16", "float16", "fp32", "float32"}));
  cmd.add_option("--shard-size", flags.shard_size, "Largest weight file of the Hugging Face output (5GB, 500MB, 2GiB, ...)")
      ->capture_default_str();
}

// A MoEKit input writes a MoEKit model directory: the Hugging Face output flags do not apply.
void refuse_hf_write_flags(const CLI::App& cmd, const std::string& in_dir) {
  MOEKIT_CHECK_ARG(cmd.count("--dtype") == 0 && cmd.count("--shard-size") == 0,
                   "--dtype and --shard-size apply to a Hugging Face input directory; ", in_dir,
                   " is a MoEKit model directory (export hf writes Hugging Face files)");
}

std::string gigabytes(uint64_t bytes) {
  std::ostringstream s;
  s << std::fixed << std::setprecision(2) << bytes / 1e9 << " GB";
  return s.str();
}

}  // namespace

void add_scale_commands(CLI::App& app, const GlobalOptions& global) {
  struct Options {
    std::string in_dir, out_dir, width = "fpi", depth = "stack";
    bool force = false;
    GrowOptions grow;
    UpcycleOptions upcycle;
    HfWriteFlags hf;
  };
  auto o = std::make_shared<Options>();
  CLI::App* grow = app.add_subcommand("grow", "Scale-Up: grow a dense LM wider (fpi | aki) and deeper (stack | interpolate)");
  grow->add_option("in_dir", o->in_dir, "Trained dense LM: a MoEKit model directory, or a Hugging Face LLaMA / Mistral / Qwen2 directory")
      ->required()
      ->check(CLI::ExistingDirectory);
  grow->add_option("out_dir", o->out_dir, "Grown model directory (Hugging Face layout for a Hugging Face input)")->required();
  grow->add_option("--d-model", o->grow.d_model, "New width (0 = keep)")->capture_default_str();
  grow->add_option("--n-heads", o->grow.n_heads, "New query heads (0 = d_model / head_dim)")->capture_default_str();
  grow->add_option("--d-ffn", o->grow.d_ffn, "New FFN hidden width (0 = keep)")->capture_default_str();
  grow->add_option("--n-layers", o->grow.n_layers, "New depth (0 = keep)")->capture_default_str();
  grow->add_option("--width", o->width, "fpi (function preserving) | aki (from the next layer; AKI-Pro = aki + interpolate)")
      ->capture_default_str();
  grow->add_option("--depth", o->depth, "stack (layer i <- i mod L) | interpolate (layer i <- floor(i L / L_new))")
      ->capture_default_str();
  add_hf_write_flags(*grow, o->hf);
  add_force_flag(*grow, o->force);
  grow->callback([o, &global, grow] {
    apply_runtime(global);
    o->grow.width = parse_width_growth(o->width);
    o->grow.depth = parse_depth_growth(o->depth);
    if (is_hf_model_dir(o->in_dir)) {
      const HfWriteOptions write = o->hf.options();
      OutputDir out(o->out_dir, o->force, {o->in_dir});
      const HfScaleReport r = grow_hf_dir(o->in_dir, out.path(), o->grow, write);
      copy_tokenizer(o->in_dir, out.path());
      out.commit();
      std::cout << "grew " << o->in_dir << " -> " << o->out_dir << " (Hugging Face layout; " << o->width << " + "
                << o->depth << "; " << r.config.to_string() << "; " << r.tensors << " tensors, " << gigabytes(r.bytes)
                << " in " << r.files.size() << (r.files.size() == 1 ? " file" : " files") << "; peak memory "
                << peak_resident_bytes() / 1000000 << " MB)\n";
      return;
    }
    refuse_hf_write_flags(*grow, o->in_dir);
    OutputDir out(o->out_dir, o->force, {o->in_dir});
    const LmWeights grown = grow_lm(read_lm_dir(o->in_dir), o->grow);
    save_lm_dir(grown, out.path());
    copy_tokenizer(o->in_dir, out.path());
    out.commit();
    std::cout << "grew " << o->in_dir << " -> " << o->out_dir << " (" << o->width << " + " << o->depth << "; "
              << grown.config.to_string() << "; " << describe(grown) << ")\n";
  });

  CLI::App* up = app.add_subcommand("upcycle", "Scale-Out: a dense LM into an MoE whose experts copy its FFNs");
  up->add_option("in_dir", o->in_dir, "Dense LM: a MoEKit model directory, or a Hugging Face LLaMA / Mistral directory")
      ->required()
      ->check(CLI::ExistingDirectory);
  up->add_option("out_dir", o->out_dir, "MoE model directory (Hugging Face Mixtral for a Hugging Face input)")->required();
  up->add_option("--experts", o->upcycle.num_experts, "Experts per MoE layer")->capture_default_str();
  up->add_option("--top-k", o->upcycle.top_k, "Experts per token")->capture_default_str();
  up->add_option("--granularity", o->upcycle.granularity, "FFN slices per replica (granular upcycling)")->capture_default_str();
  up->add_option("--first-layer", o->upcycle.first_layer, "First MoE layer")->capture_default_str();
  up->add_option("--every", o->upcycle.every, "Then every n-th layer")->capture_default_str();
  up->add_option("--router-std", o->upcycle.router_std, "Router init N(0, std)")->capture_default_str();
  up->add_option("--aux-loss-coef", o->upcycle.aux_loss_coef, "Load-balancing loss coefficient")->capture_default_str();
  up->add_option("--z-loss-coef", o->upcycle.z_loss_coef, "Router z-loss coefficient")->capture_default_str();
  up->add_option("--seed", o->upcycle.seed, "Router init seed")->capture_default_str();
  add_hf_write_flags(*up, o->hf);
  add_force_flag(*up, o->force);
  up->callback([o, &global, up] {
    apply_runtime(global);
    if (is_hf_model_dir(o->in_dir)) {
      const HfWriteOptions write = o->hf.options();
      OutputDir out(o->out_dir, o->force, {o->in_dir});
      const HfScaleReport r = upcycle_hf_dir(o->in_dir, out.path(), o->upcycle, write);
      copy_tokenizer(o->in_dir, out.path());
      out.commit();
      std::cout << "upcycled " << o->in_dir << " -> " << o->out_dir << " (Hugging Face Mixtral: "
                << r.config.moe.num_experts << " experts, top-" << r.config.moe.top_k << ", granularity "
                << o->upcycle.granularity << "; " << r.tensors << " tensors, " << gigabytes(r.bytes) << " in "
                << r.files.size() << (r.files.size() == 1 ? " file" : " files") << "; peak memory "
                << peak_resident_bytes() / 1000000 << " MB)\n";
      return;
    }
    refuse_hf_write_flags(*up, o->in_dir);
    OutputDir out(o->out_dir, o->force, {o->in_dir});
    const LmWeights moe = upcycle_lm(read_lm_dir(o->in_dir), o->upcycle);
    save_lm_dir(moe, out.path());
    copy_tokenizer(o->in_dir, out.path());
    out.commit();
    std::cout << "upcycled " << o->in_dir << " -> " << o->out_dir << " (" << moe.config.moe.num_experts
              << " experts, top-" << moe.config.moe.top_k << ", granularity " << o->upcycle.granularity << "; "
              << describe(moe) << ")\n";
  });

  CLI::App* exp = app.add_subcommand("export", "Write a MoEKit model in another toolkit's layout");
  exp->require_subcommand(1);
  CLI::App* exp_hf = exp->add_subcommand("hf", "An LM as Hugging Face LLaMA / Qwen2 / Mixtral (config.json + model.safetensors or shards with their index)");
  exp_hf->add_option("model_dir", o->in_dir, "LM model directory")->required()->check(CLI::ExistingDirectory);
  exp_hf->add_option("hf_dir", o->out_dir, "Output directory")->required();
  add_hf_write_flags(*exp_hf, o->hf);
  add_force_flag(*exp_hf, o->force);
  exp_hf->callback([o, &global] {
    apply_runtime(global);
    const HfWriteOptions write = o->hf.options();
    OutputDir out(o->out_dir, o->force, {o->in_dir});
    export_hf_llama(read_lm_dir(o->in_dir), out.path(), write);
    copy_tokenizer(o->in_dir, out.path());
    out.commit();
    std::cout << "exported " << o->in_dir << " -> " << o->out_dir << "\n";
  });
}

void add_quantize_command(CLI::App& app, const GlobalOptions& global) {
  struct Options {
    std::string in_dir, out_dir, experts;
    bool force = false;
  };
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand(
      "quantize",
      "MoE experts to int8 (per-output-channel symmetric) or bf16 (bf16 GEMMs for batched rows on CPUs with "
      "native bf16) for faster, smaller CPU inference");
  cmd->add_option("model_dir", o->in_dir, "Model directory with MoE layers (any model type)")
      ->required()
      ->check(CLI::ExistingDirectory);
  cmd->add_option("out_dir", o->out_dir, "Model directory to write")->required();
  cmd->add_option("--experts", o->experts, "How to store the experts' weights: int8 | bf16")
      ->required()
      ->check(CLI::IsMember({"int8", "bf16"}));
  add_force_flag(*cmd, o->force);
  cmd->callback([o, &global] {
    apply_runtime(global);
    OutputDir out(o->out_dir, o->force, {o->in_dir});
    const QuantizeReport r = quantize_model_dir(o->in_dir, out.path(), o->experts);
    out.commit();
    auto size = [](int64_t bytes) {
      std::ostringstream s;
      s << std::fixed << std::setprecision(1);
      if (bytes >= 1000000) {
        s << bytes / 1e6 << " MB";
      } else {
        s << bytes / 1e3 << " kB";
      }
      return s.str();
    };
    std::cout << "quantized " << o->in_dir << " -> " << o->out_dir << " (experts of " << r.layers
              << " MoE layers to " << o->experts << ": " << size(r.float_bytes) << " -> " << size(r.quantized_bytes)
              << ")\n";
  });
}

void add_import_hf_command(CLI::App& import, const GlobalOptions& global) {
  struct Options {
    std::string hf_dir, model_dir, dtype;
    bool force = false;
  };
  auto dirs = std::make_shared<Options>();
  CLI::App* hf = import.add_subcommand("hf", "A Hugging Face llama / mistral / qwen2 / mixtral directory");
  hf->add_option("hf_dir", dirs->hf_dir, "config.json + model.safetensors (or shards)")->required()->check(CLI::ExistingDirectory);
  hf->add_option("model_dir", dirs->model_dir, "Output MoEKit model directory")->required();
  hf->add_option("--dtype", dirs->dtype, "Weight dtype of the model directory: bf16 | fp16 | fp32 (default: each tensor's own)");
  add_force_flag(*hf, dirs->force);
  hf->callback([dirs, &global] {
    apply_runtime(global);
    std::optional<torch::ScalarType> dtype;
    if (!dirs->dtype.empty()) dtype = parse_hf_dtype(dirs->dtype);
    OutputDir out(dirs->model_dir, dirs->force, {dirs->hf_dir});
    const HfImportReport r = import_hf_dir(dirs->hf_dir, out.path(), dtype);
    copy_tokenizer(dirs->hf_dir, out.path());
    out.commit();
    std::cout << "imported " << dirs->hf_dir << " -> " << dirs->model_dir << " (lm; " << r.config.to_string() << "; "
              << r.tensors << " tensors, " << gigabytes(r.bytes) << "; peak memory "
              << peak_resident_bytes() / 1000000 << " MB)\n";
  });
}

}  // namespace moekit::cli
