# llt-report: Table 2 as grouped bars (× = out of memory). Reproduce inside this folder: gnuplot table2.gp
set encoding utf8
if (strstrt(GPVAL_TERMINALS, "pngcairo") > 0) {
  set terminal pngcairo size 1100,900 noenhanced font ",10"
} else {
  set terminal png size 1100,900 noenhanced
}
set output "table2.png"
set grid
set multiplot layout 2,1 title "Table 2: System performance measurement (× = out of memory)"
set style fill solid 0.8 border -1
set boxwidth 0.4000 absolute
set xrange [-0.6:7.6]
set yrange [0:*]
set offsets 0,0,graph 0.08,0
set bmargin 5
set key outside right top
set xtics ("GA off\nMP off\nLoRA off" 0, "GA off\nMP off\nLoRA on" 1, "GA off\nMP on\nLoRA off" 2, "GA off\nMP on\nLoRA on" 3, "GA on\nMP off\nLoRA off" 4, "GA on\nMP off\nLoRA on" 5, "GA on\nMP on\nLoRA off" 6, "GA on\nMP on\nLoRA on" 7)
set ylabel "Peak Mem (MB, CPU allocator)"
plot "table2.dat" index 0 using 1:(strcol(4) eq "ok" ? $2 : 1/0) with boxes linecolor rgb "#1f77b4" pointtype 1 dashtype 1 title "grad_checkpoint none", \
     "table2.dat" index 0 using 1:(0):(strcol(4) eq "ok" ? "" : strcol(4) eq "oom" ? "×" : strcol(4)) with labels font ",16" offset 0,0.8 textcolor rgb "#d62728" notitle, \
     "table2.dat" index 1 using 1:(strcol(4) eq "ok" ? $2 : 1/0) with boxes linecolor rgb "#ff7f0e" pointtype 2 dashtype 1 title "grad_checkpoint block", \
     "table2.dat" index 1 using 1:(0):(strcol(4) eq "ok" ? "" : strcol(4) eq "oom" ? "×" : strcol(4)) with labels font ",16" offset 0,0.8 textcolor rgb "#d62728" notitle
set ylabel "Runtime (s)"
plot "table2.dat" index 0 using 1:(strcol(4) eq "ok" ? $3 : 1/0) with boxes linecolor rgb "#1f77b4" pointtype 1 dashtype 1 title "grad_checkpoint none", \
     "table2.dat" index 0 using 1:(0):(strcol(4) eq "ok" ? "" : strcol(4) eq "oom" ? "×" : strcol(4)) with labels font ",16" offset 0,0.8 textcolor rgb "#d62728" notitle, \
     "table2.dat" index 1 using 1:(strcol(4) eq "ok" ? $3 : 1/0) with boxes linecolor rgb "#ff7f0e" pointtype 2 dashtype 1 title "grad_checkpoint block", \
     "table2.dat" index 1 using 1:(0):(strcol(4) eq "ok" ? "" : strcol(4) eq "oom" ? "×" : strcol(4)) with labels font ",16" offset 0,0.8 textcolor rgb "#d62728" notitle
unset multiplot
