//! The `bbc` command line: parses arguments with clap and dispatches to `cli::<subcommand>`.
//!
//! Exit codes: 0 on success, 1 for a user error (diagnostics or a message on stderr), 2 for a
//! usage error (clap's own).

mod cli;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// A declarative model-graph compiler for neural-network backbones.
///
/// A `.bb` spec describes a model family; `bbc` elaborates one model of it into a typed graph,
/// checks checkpoints against it, reports its costs, and compiles and runs it on the CPU, on a
/// GPU through Vulkan or CUDA (or with the reference interpreter).
#[derive(Parser, Debug)]
#[command(name = "bbc", version, about, long_about)]
#[command(after_help = "Examples:\n  \
    bbc models specs/convnext.bb\n  \
    bbc check specs/convnext.bb --all-models\n  \
    bbc weights specs/convnext.bb --model convnext_atto --against convnext_atto.safetensors\n  \
    bbc stats specs/convnext.bb --model convnext_tiny --depth 2\n  \
    bbc run specs/deep_sets.bb --model deep_sets_sum --input x.npy --output y.npy\n  \
    bbc bench specs/convnext.bb --model convnext_atto --threads 2 --runs 10\n  \
    bbc run specs/resnet.bb --model resnet50 --target gpu\n  \
    bbc compile specs/convnext.bb --model convnext_tiny --target cuda -o convnext_tiny.cuda")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    Check(cli::check::CheckArgs),
    Ir(cli::ir::IrArgs),
    Weights(cli::weights::WeightsArgs),
    Stats(cli::stats::StatsArgs),
    Graph(cli::graph::GraphArgs),
    Run(cli::run::RunArgs),
    Bench(cli::bench::BenchArgs),
    Compile(cli::compile::CompileArgs),
    Models(cli::models::ModelsArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Check(a) => cli::check::main(a),
        Command::Ir(a) => cli::ir::main(a),
        Command::Weights(a) => cli::weights::main(a),
        Command::Stats(a) => cli::stats::main(a),
        Command::Graph(a) => cli::graph::main(a),
        Command::Run(a) => cli::run::main(a),
        Command::Bench(a) => cli::bench::main(a),
        Command::Compile(a) => cli::compile::main(a),
        Command::Models(a) => cli::models::main(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(cli::CliError(text)) => {
            cli::to_stderr(&text);
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
