// Plain Verilator C++ harness for tb_pattern_matmul: the simulation-speed ceiling.
//
// No VPI, no Python: the clock is toggled here and the design is evaluated twice per cycle. The
// harness takes the same plusargs as the cocotb run (stream files, counts, replays, stall, seed,
// out_file) plus +max_cycles=N, holds reset for the same 4 cycles, runs until `done`, and prints one
// JSON line: the harness's `cycles` counter (first RUN to last output beat), the wall time from
// reset release to `done`, and the error/done flags. The outputs land in out_file, which the caller
// checks against the golden model.
//
// Built with `--prefix Vtop` so the model class name does not depend on the top module.

#include <chrono>
#include <ctime>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include "Vtop.h"
#include "verilated.h"

static constexpr int RESET_CYCLES = 4;  // as in sim/cocotb_matmul.py
static constexpr uint64_t HALF_PERIOD = 5;  // 10 ns clock, 1 ns time unit

static double cpu_seconds() {
    timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

int main(int argc, char** argv) {
    auto context = std::make_unique<VerilatedContext>();
    context->commandArgs(argc, argv);
    uint64_t max_cycles = 100000000ULL;
    if (const char* arg = context->commandArgsPlusMatch("max_cycles=")) {
        if (*arg) max_cycles = std::strtoull(arg + std::string("+max_cycles=").size(), nullptr, 10);
    }
    auto top = std::make_unique<Vtop>(context.get(), "TOP");

    auto cycle = [&]() {
        top->clk = 1;
        top->eval();
        context->timeInc(HALF_PERIOD);
        top->clk = 0;
        top->eval();
        context->timeInc(HALF_PERIOD);
    };

    top->clk = 0;
    top->rst = 1;
    top->eval();
    for (int i = 0; i < RESET_CYCLES && !context->gotFinish(); ++i) cycle();
    top->rst = 0;

    const auto start = std::chrono::steady_clock::now();
    const double cpu_start = cpu_seconds();
    uint64_t ticks = 0;
    while (!top->done && !context->gotFinish() && ticks < max_cycles) {
        cycle();
        ++ticks;
    }
    const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const double cpu = cpu_seconds() - cpu_start;
    const bool done = top->done;
    const uint64_t cycles = top->cycles;
    const int error = top->error;
    top->final();
    std::printf("{\"cycles\": %" PRIu64 ", \"clock_cycles\": %" PRIu64 ", \"wall_seconds\": %.9f, \"cpu_seconds\": %.9f, "
                "\"done\": %d, \"error\": %d, \"timed_out\": %d}\n",
                cycles, ticks, wall, cpu, done ? 1 : 0, error, (!done && ticks >= max_cycles) ? 1 : 0);
    std::fflush(stdout);
    return done && !error ? 0 : 1;
}
